"""bevkd data layer: dataset readers, BEV geometry, box layout and the teacher-target cache.

Imports no other bevkd package and no heavy dependency at import time.
"""

from storage.grid import DEMO_GRID, NUSCENES_GRID, ROAD_GRID, BEVGrid
from storage.sample import CAMERA_NAMES, NUSCENES_CLASSES, CameraInfo, Sample

__all__ = ["BEVGrid", "DEMO_GRID", "NUSCENES_GRID", "ROAD_GRID", "CAMERA_NAMES", "NUSCENES_CLASSES", "CameraInfo",
           "Sample"]
