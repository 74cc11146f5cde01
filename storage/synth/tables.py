"""The 13 nuScenes v1.0 tables of a synthetic dataset, built record by record and written as
JSON (``<dataroot>/<version>/<table>.json``) in a fixed order so that equal inputs give
byte-identical files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


from storage.arrays import Float64Array
from storage.synth.scene import CAMERAS, CLASS_SPECS, LIDAR, SensorSpec
from storage.transforms import quaternion_from_rotation

TABLE_NAMES = ("attribute", "calibrated_sensor", "category", "ego_pose", "instance", "log", "map", "sample",
               "sample_annotation", "sample_data", "scene", "sensor", "visibility")
ATTRIBUTES = ("vehicle.moving", "vehicle.stopped", "vehicle.parked", "cycle.with_rider", "cycle.without_rider",
              "pedestrian.sitting_lying_down", "pedestrian.standing", "pedestrian.moving")
#: nuScenes visibility tokens and levels (fraction of the object visible).
VISIBILITY = (("1", "v0-40", 0.0), ("2", "v40-60", 0.4), ("3", "v60-80", 0.6), ("4", "v80-100", 0.8))


def visibility_token(fraction: float) -> str:
    """nuScenes visibility token of a visible fraction in ``[0, 1]``."""
    return [tok for tok, _, lo in VISIBILITY if fraction >= lo][-1]


def pose_record(transform: Float64Array) -> dict[str, Any]:
    """``translation`` / ``rotation`` (w, x, y, z) of a ``(4, 4)`` pose as JSON lists."""
    return {"translation": [float(v) for v in transform[:3, 3]],
            "rotation": [float(v) for v in quaternion_from_rotation(transform[:3, :3])]}


class Tables:
    """Accumulates the records of every table; ``token(...)`` makes deterministic 32-hex ids."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.records: dict[str, list[dict[str, Any]]] = {name: [] for name in TABLE_NAMES}
        self.map_token = self.token("map")
        self.records["map"].append({"token": self.map_token, "log_tokens": [], "category": "semantic_prior",
                                    "filename": f"maps/{self.map_token}.png"})
        self.category_token = {cls: self.token("category", spec.category) for cls, spec in CLASS_SPECS.items()}
        for cls, spec in CLASS_SPECS.items():
            self.records["category"].append({"token": self.category_token[cls], "name": spec.category,
                                             "description": f"synthetic {cls}"})
        self.attribute_token = {name: self.token("attribute", name) for name in ATTRIBUTES}
        for name in ATTRIBUTES:
            self.records["attribute"].append({"token": self.attribute_token[name], "name": name, "description": name})
        for tok, level, _ in VISIBILITY:
            self.records["visibility"].append({"token": tok, "level": level,
                                               "description": f"visibility of whole object is {level[1:]} %"})
        self.sensor_token: dict[str, str] = {}
        for sensor in (LIDAR, *CAMERAS):
            self.sensor_token[sensor.channel] = self.token("sensor", sensor.channel)
            self.records["sensor"].append({"token": self.sensor_token[sensor.channel], "channel": sensor.channel,
                                           "modality": sensor.modality})

    def token(self, *parts: object) -> str:
        text = "|".join(["bevkd-synth", str(self.seed), *map(str, parts)])
        return hashlib.md5(text.encode()).hexdigest()

    def add(self, table: str, record: dict[str, Any]) -> dict[str, Any]:
        self.records[table].append(record)
        return record

    def add_log(self, scene_name: str, index: int) -> str:
        tok = self.token("log", scene_name)
        self.add("log", {"token": tok, "logfile": f"synth-s{self.seed}-{index:04d}", "vehicle": "n000",
                         "date_captured": "2018-08-01", "location": "synth-city"})
        self.records["map"][0]["log_tokens"].append(tok)
        return tok

    def add_calibrated_sensor(self, scene_name: str, spec: SensorSpec, image_size: tuple[int, int]) -> str:
        tok = self.token("calibrated_sensor", scene_name, spec.channel)
        intrinsic = [] if spec.modality == "lidar" else spec.intrinsic(image_size).tolist()
        self.add("calibrated_sensor", {"token": tok, "sensor_token": self.sensor_token[spec.channel],
                                       **pose_record(spec.ego_from_sensor), "camera_intrinsic": intrinsic})
        return tok

    def write(self, table_dir: Path, compact: bool = False) -> None:
        """One ``<table>.json`` per table; ``compact`` drops the line breaks (json's C encoder:
        ~10x faster for trainval-sized tables)."""
        table_dir.mkdir(parents=True, exist_ok=True)
        for name in TABLE_NAMES:
            with open(table_dir / f"{name}.json", "w") as f:
                if compact:
                    f.write(json.dumps(self.records[name]))
                else:
                    json.dump(self.records[name], f, indent=0)


def link(records: list[dict[str, Any]]) -> None:
    """Fill ``prev`` / ``next`` of time-ordered records ('' at the ends)."""
    for i, rec in enumerate(records):
        rec["prev"] = records[i - 1]["token"] if i > 0 else ""
        rec["next"] = records[i + 1]["token"] if i + 1 < len(records) else ""
