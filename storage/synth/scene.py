"""What a synthetic scene contains: the sensor rig, the ego trajectory and the objects.

Everything lives in the *scene frame* (ground ``z = 0``, road along +x, ego starting at the
origin heading +x); ``Scene.global_from_scene`` places it on the map. Layout across the road
(``|y|``, m): ego lane 0-1.75, traffic lanes to 5.25 (same direction at ``y = -3.5``, oncoming
at ``+3.5``), parking / shoulder to 8, sidewalk to 11, lots to 16, facades at 17-22.
Objects move at constant velocity along their heading, so the devkit's finite-difference
``box_velocity`` recovers their velocity exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from storage.arrays import Float64Array, Int64Array
from storage.boxes import BOX_DIM
from storage.sample import CAMERA_NAMES, NUSCENES_CLASSES
from storage.synth.config import SynthConfig
from storage.transforms import make_transform


def rot_z(yaw: float) -> Float64Array:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


@dataclass(frozen=True, kw_only=True)
class ClassSpec:
    """One detection class: nuScenes category, mean size ``(l, w, h)`` m, look and motion."""

    category: str
    lwh: tuple[float, float, float]
    colour: tuple[int, int, int]
    intensity: float
    p_moving: float
    speed: tuple[float, float]
    moving_attribute: str
    static_attribute: str


#: Keyed by detection class name; sizes are nuScenes class means (rounded).
CLASS_SPECS: dict[str, ClassSpec] = {
    "car": ClassSpec(category="vehicle.car", lwh=(4.6, 1.95, 1.73), colour=(200, 40, 40), intensity=40,
                     p_moving=0.45, speed=(4.0, 11.0),
                     moving_attribute="vehicle.moving", static_attribute="vehicle.parked"),
    "truck": ClassSpec(category="vehicle.truck", lwh=(6.9, 2.5, 2.8), colour=(40, 90, 200), intensity=35,
                       p_moving=0.35, speed=(3.0, 9.0),
                       moving_attribute="vehicle.moving", static_attribute="vehicle.parked"),
    "construction_vehicle": ClassSpec(category="vehicle.construction", lwh=(6.4, 2.8, 3.2), colour=(230, 180, 20),
                                      intensity=45, p_moving=0.1, speed=(1.0, 3.0),
                                      moving_attribute="vehicle.moving", static_attribute="vehicle.parked"),
    "bus": ClassSpec(category="vehicle.bus.rigid", lwh=(11.0, 2.9, 3.5), colour=(30, 150, 60), intensity=30,
                     p_moving=0.5, speed=(3.0, 9.0),
                     moving_attribute="vehicle.moving", static_attribute="vehicle.stopped"),
    "trailer": ClassSpec(category="vehicle.trailer", lwh=(12.0, 2.9, 3.8), colour=(120, 80, 50), intensity=30,
                         p_moving=0.15, speed=(3.0, 8.0),
                         moving_attribute="vehicle.moving", static_attribute="vehicle.parked"),
    "barrier": ClassSpec(category="movable_object.barrier", lwh=(0.5, 2.5, 1.0), colour=(235, 235, 235), intensity=60,
                         p_moving=0.0, speed=(0.0, 0.0), moving_attribute="", static_attribute=""),
    "motorcycle": ClassSpec(category="vehicle.motorcycle", lwh=(2.1, 0.8, 1.5), colour=(150, 40, 170), intensity=35,
                            p_moving=0.5, speed=(4.0, 11.0), moving_attribute="cycle.with_rider",
                            static_attribute="cycle.without_rider"),
    "bicycle": ClassSpec(category="vehicle.bicycle", lwh=(1.75, 0.6, 1.3), colour=(40, 200, 200), intensity=25,
                         p_moving=0.5, speed=(2.5, 6.0), moving_attribute="cycle.with_rider",
                         static_attribute="cycle.without_rider"),
    "pedestrian": ClassSpec(category="human.pedestrian.adult", lwh=(0.73, 0.67, 1.77), colour=(250, 130, 170),
                            intensity=15, p_moving=0.6, speed=(0.8, 1.6), moving_attribute="pedestrian.moving",
                            static_attribute="pedestrian.standing"),
    "traffic_cone": ClassSpec(category="movable_object.trafficcone", lwh=(0.41, 0.41, 1.07), colour=(255, 110, 0),
                              intensity=120, p_moving=0.0, speed=(0.0, 0.0), moving_attribute="", static_attribute=""),
}
assert tuple(CLASS_SPECS) == NUSCENES_CLASSES
#: Relative frequency of the extra (beyond one per class) objects.
CLASS_WEIGHTS = np.array([0.34, 0.08, 0.03, 0.03, 0.03, 0.12, 0.04, 0.04, 0.20, 0.09])
#: Boxes float this far above the ground so ground returns never fall inside a box, m.
GROUND_CLEARANCE = 0.02


@dataclass(frozen=True, kw_only=True)
class SensorSpec:
    """One sensor of the rig: ego_from_sensor and, for cameras, the horizontal FOV."""

    channel: str
    modality: str
    translation: tuple[float, float, float]
    yaw_deg: float
    fov_deg: float = 0.0
    time_offset_us: int = 0

    @property
    def ego_from_sensor(self) -> Float64Array:
        yaw = np.deg2rad(self.yaw_deg)
        if self.modality == "lidar":
            return make_transform(rot_z(yaw), np.asarray(self.translation, dtype=np.float64))
        forward = np.array([np.cos(yaw), np.sin(yaw), 0.0])  # OpenCV: +z forward, +x right, +y down
        right = np.array([np.sin(yaw), -np.cos(yaw), 0.0])
        down = np.array([0.0, 0.0, -1.0])
        return make_transform(np.stack([right, down, forward], axis=1), np.asarray(self.translation, dtype=np.float64))

    def intrinsic(self, image_size: tuple[int, int]) -> Float64Array:
        """``(3, 3)`` pinhole matrix for ``(width, height)`` pixels, square pixels, centred."""
        w, h = image_size
        f = (w / 2.0) / np.tan(np.deg2rad(self.fov_deg) / 2.0)
        return np.array([[f, 0.0, w / 2.0], [0.0, f, h / 2.0], [0.0, 0.0, 1.0]])


#: nuScenes-like rig: LIDAR_TOP yawed -90 deg (its +x points to the ego's right).
LIDAR = SensorSpec(channel="LIDAR_TOP", modality="lidar", translation=(0.943713, 0.0, 1.84023), yaw_deg=-90.0)
CAMERAS: tuple[SensorSpec, ...] = (
    SensorSpec(channel="CAM_FRONT", modality="camera", translation=(1.70, 0.016, 1.51), yaw_deg=0.0, fov_deg=70.0,
               time_offset_us=12_000),
    SensorSpec(channel="CAM_FRONT_RIGHT", modality="camera", translation=(1.55, -0.49, 1.49), yaw_deg=-55.0,
               fov_deg=70.0, time_offset_us=20_000),
    SensorSpec(channel="CAM_FRONT_LEFT", modality="camera", translation=(1.52, 0.49, 1.51), yaw_deg=55.0,
               fov_deg=70.0, time_offset_us=4_000),
    SensorSpec(channel="CAM_BACK", modality="camera", translation=(0.03, 0.003, 1.58), yaw_deg=180.0, fov_deg=110.0,
               time_offset_us=-13_000),
    SensorSpec(channel="CAM_BACK_LEFT", modality="camera", translation=(1.04, 0.48, 1.57), yaw_deg=110.0,
               fov_deg=70.0, time_offset_us=-4_000),
    SensorSpec(channel="CAM_BACK_RIGHT", modality="camera", translation=(1.04, -0.48, 1.56), yaw_deg=-110.0,
               fov_deg=70.0, time_offset_us=-21_000),
)
assert tuple(c.channel for c in CAMERAS) == CAMERA_NAMES


@dataclass(frozen=True, kw_only=True)
class EgoTrajectory:
    """Ego drives +x at ``speed`` m/s, weaving ``y = A sin(2 pi t / period + phase) - A sin(phase)``."""

    speed: float
    amplitude: float
    period: float
    phase: float

    def scene_from_ego(self, t: float) -> Float64Array:
        """``(4, 4)`` pose at ``t`` seconds after the first keyframe."""
        w = 2 * np.pi / self.period
        y = self.amplitude * (np.sin(w * t + self.phase) - np.sin(self.phase))
        dy = self.amplitude * w * np.cos(w * t + self.phase)
        return make_transform(rot_z(float(np.arctan2(dy, self.speed))),
                              np.array([self.speed * t, y, 0.0], dtype=np.float64))


@dataclass(frozen=True, kw_only=True)
class SceneObjects:
    """``K`` objects with constant velocity.

    Attributes:
        boxes0: ``(K, 9)`` float64 boxes at ``t = 0``, scene frame.
        labels: ``(K,)`` int64 indices into NUSCENES_CLASSES.
        attributes: ``K`` attribute names ('' for barrier / cone).
    """

    boxes0: Float64Array
    labels: Int64Array
    attributes: tuple[str, ...]

    def boxes_at(self, t: float) -> Float64Array:
        """``(K, 9)`` boxes at ``t`` seconds (centres moved by ``t * velocity``)."""
        b = self.boxes0.copy()
        b[:, :2] += t * b[:, 7:9]
        return b


@dataclass(frozen=True, kw_only=True)
class Scene:
    index: int
    name: str
    ego: EgoTrajectory
    objects: SceneObjects
    global_from_scene: Float64Array
    wall_offset: tuple[float, float]  # (+y facade, -y facade), m
    start_us: int


def _obb_overlap(a: Float64Array, b: Float64Array) -> bool:
    """Separating-axis test of two BEV rectangles ``[x, y, l, w, yaw]``."""
    def axes(r: Float64Array) -> Float64Array:
        c, s = np.cos(r[4]), np.sin(r[4])
        return np.array([[c, s], [-s, c]])

    def corners(r: Float64Array) -> Float64Array:
        ax = axes(r)
        out: Float64Array = r[:2] + np.array([[1, 1], [1, -1], [-1, 1], [-1, -1]]) * [r[2] / 2, r[3] / 2] @ ax
        return out
    ca, cb = corners(a), corners(b)
    for axis in np.concatenate([axes(a), axes(b)]):
        pa, pb = ca @ axis, cb @ axis
        if pa.max() < pb.min() or pb.max() < pa.min():
            return False
    return True


def _swept(box: Float64Array, duration: float, margin: float) -> Float64Array:
    """BEV rectangle covering a box over ``[t_min, duration]`` (moves along its heading)."""
    speed = float(np.hypot(box[7], box[8]))
    t0 = -1.0  # sweeps before the first keyframe
    travel = speed * (duration - t0)
    c, s = np.cos(box[6]), np.sin(box[6])
    sgn = 1.0 if box[7] * c + box[8] * s >= 0 else -1.0
    mid = box[:2] + sgn * np.array([c, s]) * (t0 * speed + travel / 2)
    return np.array([mid[0], mid[1], box[3] + travel + 2 * margin, box[4] + 2 * margin, box[6]])


def _propose(cls: str, rng: np.random.Generator, x_range: tuple[float, float]) -> tuple[Float64Array, str]:
    """A candidate ``(9,)`` box (scene frame, t = 0) and attribute for class ``cls``."""
    spec = CLASS_SPECS[cls]
    lwh = np.array(spec.lwh) * rng.uniform(0.9, 1.1, size=3)
    side = rng.choice([-1.0, 1.0])
    moving = rng.uniform() < spec.p_moving
    speed = rng.uniform(*spec.speed) if moving else 0.0
    x = rng.uniform(*x_range)
    along = 0.0 if side < 0 else np.pi  # right-hand traffic: -y lane drives +x
    if cls in ("car", "truck", "bus", "trailer", "construction_vehicle"):
        if moving:
            y, yaw = side * 3.5, along + rng.normal(0, 0.02)
        elif cls in ("trailer", "construction_vehicle") and rng.uniform() < 0.6:
            y, yaw = side * rng.uniform(11.5 + lwh[1], 15.5), rng.uniform(-np.pi, np.pi)
        else:
            y, yaw = side * 6.6, along + rng.choice([0.0, np.pi]) + rng.normal(0, 0.05)
    elif cls in ("motorcycle", "bicycle"):
        if moving:
            y, yaw = side * 4.6, along + rng.normal(0, 0.05)
        else:
            y, yaw = side * rng.uniform(6.0, 10.5), rng.uniform(-np.pi, np.pi)
    elif cls == "pedestrian":
        y = side * rng.uniform(8.5, 10.8)
        yaw = along + rng.choice([0.0, np.pi]) + rng.normal(0, 0.1) if moving else rng.uniform(-np.pi, np.pi)
    elif cls == "barrier":
        y, yaw = side * rng.uniform(5.7, 7.6), np.pi / 2 + rng.normal(0, 0.1)
    else:  # traffic_cone
        y, yaw = side * rng.uniform(5.5, 7.8), rng.uniform(-np.pi, np.pi)
    yaw = float((yaw + np.pi) % (2 * np.pi) - np.pi)
    box = np.zeros(BOX_DIM)
    box[:3] = (x, y, lwh[2] / 2 + GROUND_CLEARANCE)
    box[3:6] = lwh
    box[6] = yaw
    box[7:9] = speed * np.cos(yaw), speed * np.sin(yaw)
    return box, spec.moving_attribute if moving else spec.static_attribute


def make_objects(rng: np.random.Generator, count: int, travel: float, duration: float) -> SceneObjects:
    """``count`` non-overlapping objects: one of each class close to the ego path, then extras."""
    classes = list(NUSCENES_CLASSES) + list(rng.choice(NUSCENES_CLASSES, size=count - len(NUSCENES_CLASSES),
                                                        p=CLASS_WEIGHTS / CLASS_WEIGHTS.sum()))
    placed: list[Float64Array] = []
    swept: list[Float64Array] = []
    labels, attributes = [], []
    for i, cls in enumerate(classes):
        near = i < len(NUSCENES_CLASSES)
        x_range = (travel / 2 - 12.0, travel / 2 + 18.0) if near else (-35.0, travel + 45.0)
        for _ in range(200):
            box, attr = _propose(str(cls), rng, x_range)
            rect = _swept(box, duration, margin=0.4)
            if not any(_obb_overlap(rect, other) for other in swept):
                placed.append(box)
                swept.append(rect)
                labels.append(NUSCENES_CLASSES.index(str(cls)))
                attributes.append(attr)
                break
    return SceneObjects(boxes0=np.array(placed).reshape(-1, BOX_DIM), labels=np.array(labels, dtype=np.int64),
                        attributes=tuple(attributes))


def scene_names(config: SynthConfig) -> list[tuple[str, str]]:
    """``(scene name, split)`` for each scene index, from the devkit's split lists.

    ``v1.0-mini``: the 2 ``mini_val`` names first, then ``mini_train``. ``v1.0-trainval``:
    even indices take ``val`` names, odd ones ``train`` names; once the 150 ``val`` names are
    used, the remaining ``train`` names (850 scenes in all, as nuScenes trainval).

    Raises:
        ValueError: more scenes than the version has names.
    """
    from nuscenes.utils import splits  # lazy: the devkit pulls cv2 / matplotlib

    if config.version == "v1.0-mini":
        pool = [(n, "mini_val") for n in splits.mini_val] + [(n, "mini_train") for n in splits.mini_train]
        return pool[:config.num_scenes]
    val, train = [(n, "val") for n in splits.val], [(n, "train") for n in splits.train]
    if config.num_scenes > len(val) + len(train):
        raise ValueError(f"SynthConfig.num_scenes: {config.num_scenes} > {len(val) + len(train)} trainval scene names")
    out: list[tuple[str, str]] = []
    for i in range(config.num_scenes):
        first, second = (val, train) if i % 2 == 0 else (train, val)
        out.append((first or second).pop(0))
    return out


def make_scene(config: SynthConfig, index: int, name: str) -> Scene:
    """Scene ``index``: its own random stream ``SeedSequence([seed, index])``."""
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, index]))
    duration = 0.5 * (config.samples_per_scene - 1)
    ego = EgoTrajectory(speed=float(rng.uniform(2.0, 9.0)), amplitude=float(rng.uniform(0.0, 0.6)),
                        period=float(rng.uniform(6.0, 12.0)), phase=float(rng.uniform(0, 2 * np.pi)))
    count = int(rng.integers(config.objects_per_scene[0], config.objects_per_scene[1] + 1))
    objects = make_objects(rng, count, travel=ego.speed * duration, duration=duration)
    yaw = float(rng.uniform(-np.pi, np.pi))
    origin = (float(rng.uniform(300, 1500)), float(rng.uniform(300, 1500)), 0.0)
    return Scene(index=index, name=name, ego=ego, objects=objects,
                 global_from_scene=make_transform(rot_z(yaw), np.asarray(origin, dtype=np.float64)),
                 wall_offset=(float(rng.uniform(17, 22)), float(rng.uniform(17, 22))),
                 start_us=1_533_000_000_000_000 + index * 60_000_000 + config.seed % 1000 * 1_000_000_000)
