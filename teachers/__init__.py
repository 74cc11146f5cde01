"""Teacher models (pure nn.Modules) and network-free target builders: tensors in, typed outputs out.

Modules (import what you need; this package imports nothing heavy on its own):

* ``input`` — :class:`TeacherInput`, the typed batch (points, images, calibration, GT).
* ``output`` — :class:`TeacherOutput`, what every teacher returns.
* ``centerhead`` / ``center_gt`` — CenterPoint head, Gaussian targets, focal/L1 losses, decoding.
* ``config`` — frozen configs (``centerpoint_tiny``, ``centerpoint_voxel0075``).
* ``voxelize``, ``sparse_encoder``, ``bev_backbone``, ``centerpoint`` — the LiDAR teacher.
* ``camera_branch``, ``fusion`` — the BEVFusion-style camera + LiDAR teacher.
* ``cache_row`` — a sample's cache row: teacher output plus LiDAR-guided masks and depth maps
  (``build_cache_row``).
* ``registry`` — teacher name -> factory, checkpoints, ``load_teacher``.
* ``mmdet3d_convert`` — official mmdetection3d CenterPoint checkpoints.
* ``train`` — the training loop used by ``bevkd train-teacher``.
"""
