"""Reader for demonstrations in LIBERO's HDF5 layout (ours from ``prevla record-demos``, or
the official LIBERO datasets). numpy + h5py only: no torch, no ROS, no simulator.

Layout (per file, one task; see ``scripts/create_dataset.py`` in LIBERO)::

    data/                      attrs: problem_info (JSON, has language_instruction), env_args,
                                      bddl_file_name, num_demos, total, macros_image_convention
    data/demo_<i>/             attrs: num_samples
        actions (T,7) float64, states (T,n) float64, robot_states (T,9), rewards/dones (T,) uint8
        obs/agentview_rgb (T,H,W,3) uint8, obs/eye_in_hand_rgb (T,H,W,3) uint8,
        obs/joint_states (T,7), obs/gripper_states (T,2), obs/ee_pos (T,3), obs/ee_ori (T,3),
        obs/ee_states (T,6)

Images are stored in the raw render orientation ("opengl": upside down); this reader returns
them upright, matching ``Observation.images`` in the runtime.
"""
from __future__ import annotations

import bisect
import json
import os
from pathlib import Path
from typing import Iterable

import numpy as np

from prevla_models.geometry import proprio_from_state, quat_xyzw_to_axis_angle

#: Proprio vector used for training AND at run time: eef position (3), eef orientation as
#: axis-angle (3, robosuite's ``quat2axisangle``), gripper finger qpos (2). The same 8-D state
#: openpi / OpenVLA-OFT feed their LIBERO policies, and exactly ``obs/ee_states`` +
#: ``obs/gripper_states`` of a LIBERO file, so official datasets need no conversion.
PROPRIO_DIM = 8
#: Keys a file must have for ``DemoDataset`` (relative to each ``data/demo_<i>`` group).
REQUIRED_KEYS = ("actions", "obs/agentview_rgb", "obs/eye_in_hand_rgb", "obs/ee_pos",
                 "obs/ee_ori", "obs/gripper_states")


def quat2axisangle(quat_xyzw: np.ndarray) -> np.ndarray:
    """Axis-angle (3,) of an xyzw quaternion, exactly as robosuite's ``T.quat2axisangle``."""
    return quat_xyzw_to_axis_angle(quat_xyzw)


def proprio_from_observation(obs) -> np.ndarray:
    """(8,) float32 proprio of a live ``Observation`` (same definition as ``DemoDataset``)."""
    return proprio_from_state(obs.eef_pos, obs.eef_quat_xyzw, obs.gripper_qpos)


def open_hdf5(path: str | Path, mode: str = "r"):
    """``h5py.File`` with a clear ValueError naming the file when it is truncated/corrupt."""
    import h5py

    try:
        return h5py.File(path, mode)
    except OSError as e:  # h5py reports truncation / bad signatures as OSError
        raise ValueError(f"{path}: not a readable HDF5 file (truncated or corrupt? {e}); "
                         f"delete it and record it again") from e


def _instruction_from_name(path: Path) -> str:
    # Official files lack nothing here, but older ones have no problem_info: LIBERO names files
    # <SCENE>_<words of the instruction>_demo.hdf5.
    words = path.name.replace("_demo.hdf5", "").replace(".hdf5", "").split("_")
    while words and (words[0].isupper() or "SCENE" in words[0]):
        words.pop(0)
    return " ".join(words)


def _demo_keys(data) -> list[str]:
    return sorted((k for k in data.keys() if k.startswith("demo_")),
                  key=lambda k: int(k.split("_", 1)[1]) if k.split("_", 1)[1].isdigit() else -1)


class DemoDataset:
    """(demo, t) samples from LIBERO-layout HDF5 files, read lazily.

    Files are validated at construction (then closed); each process opens its own handles on
    first access, so instances can be handed to DataLoader worker processes.

    Args:
        paths: HDF5 files, or directories (every ``*.hdf5`` inside is used).

    Attributes:
        files: the HDF5 files, in order.
        instructions: language instruction of each file.
        num_demos: total number of demonstrations.
    """

    def __init__(self, paths: str | Path | Iterable[str | Path]) -> None:
        if isinstance(paths, (str, Path)):
            paths = [paths]
        files: list[Path] = []
        for p in map(Path, paths):
            files.extend(sorted(p.glob("*.hdf5")) if p.is_dir() else [p])
        if not files:
            raise ValueError(f"paths: no HDF5 files found in {paths!r}")
        self.files = files
        self.instructions: list[str] = []
        self._flip: list[bool] = []
        self._demos: list[tuple[int, str, int]] = []  # (file index, demo key, length)
        for fi, path in enumerate(files):
            if not path.exists():
                raise ValueError(f"{path}: no such file")
            with open_hdf5(path) as f:
                if "data" not in f:
                    raise ValueError(f"{path}: missing key 'data' (not a LIBERO demo file)")
                data = f["data"]
                info = data.attrs.get("problem_info")
                instr = json.loads(info).get("language_instruction") if info is not None else None
                if isinstance(instr, list):  # some LIBERO versions store a list of words
                    instr = " ".join(instr)
                self.instructions.append(str(instr or _instruction_from_name(path)))
                conv = data.attrs.get("macros_image_convention", "opengl")
                conv = conv.decode() if isinstance(conv, bytes) else str(conv)
                self._flip.append(conv != "opencv")  # opengl = upside down: rotate 180 degrees
                keys = _demo_keys(data)
                if not keys:
                    raise ValueError(f"{path}: no data/demo_<i> groups")
                for k in keys:
                    g = data[k]
                    for req in REQUIRED_KEYS:
                        if req not in g:
                            raise ValueError(f"{path}: data/{k} is missing key {req!r}")
                    n = int(g["actions"].shape[0])
                    for req in REQUIRED_KEYS[1:]:
                        if g[req].shape[0] != n:
                            raise ValueError(f"{path}: data/{k}/{req} has {g[req].shape[0]} rows, "
                                             f"actions has {n}")
                    if n > 0:
                        self._demos.append((fi, k, n))
        self.num_demos = len(self._demos)
        self._starts = np.cumsum([0] + [n for _, _, n in self._demos]).tolist()
        self._handles: dict[int, object] = {}
        self._pid = -1
        self._cache: list[dict] | None = None

    def cache_in_memory(self) -> int:
        """Read every demo's arrays into RAM once (random access then costs no HDF5 reads).

        Returns the number of bytes held. ~2 GB for 200 LIBERO demos at 128x128.
        """
        keys = ("actions", "expert_actions") + tuple(
            f"obs/{k}" for k in ("agentview_rgb", "eye_in_hand_rgb", "ee_pos", "ee_ori", "gripper_states"))
        cache, size = [], 0
        for fi, key, _ in self._demos:
            g = self._file(fi)["data"][key]
            entry: dict = {"obs": {}}
            for k in keys:
                if k in g:
                    arr = g[k][()]
                    size += arr.nbytes
                    if k.startswith("obs/"):
                        entry["obs"][k[4:]] = arr
                    else:
                        entry[k] = arr
            cache.append(entry)
        self._cache = cache
        return size

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_handles"], state["_pid"] = {}, -1  # h5py handles never cross processes
        return state

    def _file(self, fi: int):
        if self._pid != os.getpid():  # forked / spawned worker: reopen everything
            self._handles, self._pid = {}, os.getpid()
        if fi not in self._handles:
            self._handles[fi] = open_hdf5(self.files[fi])
        return self._handles[fi]

    def locate(self, index: int) -> tuple[int, int]:
        """Sample index -> (demo id, step t)."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        d = bisect.bisect_right(self._starts, index) - 1
        return d, index - self._starts[d]

    def demo_length(self, demo: int) -> int:
        """Number of steps of demo ``demo``."""
        return self._demos[demo][2]

    def sample(self, index: int, horizon: int) -> dict:
        """One training sample.

        Returns:
            dict with ``agentview``/``wrist`` (H,W,3) uint8 upright images, ``proprio`` (8,)
            float32 (see ``PROPRIO_DIM``), ``instruction`` str, ``actions`` (horizon,7) float32
            from step t (``expert_actions`` when the file has them, see ``record_episode``;
            past the demo's end the last action is repeated), ``action_mask``
            (horizon,) bool (False on padded rows), ``demo`` int, ``t`` int.
        """
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        d, t = self.locate(index)
        fi, key, n = self._demos[d]
        g = self._cache[d] if self._cache is not None else self._file(fi)["data"][key]
        end = min(t + horizon, n)
        label = "expert_actions" if "expert_actions" in g else "actions"  # DART labels if recorded
        acts = np.asarray(g[label][t:end], dtype=np.float32)
        mask = np.zeros(horizon, dtype=bool)
        mask[: end - t] = True
        if end - t < horizon:
            acts = np.concatenate([acts, np.repeat(acts[-1:], horizon - (end - t), axis=0)])
        obs = g["obs"]
        imgs = [np.asarray(obs[k][t], dtype=np.uint8) for k in ("agentview_rgb", "eye_in_hand_rgb")]
        if self._flip[fi]:
            imgs = [np.ascontiguousarray(im[::-1, ::-1]) for im in imgs]
        proprio = np.concatenate([obs["ee_pos"][t], obs["ee_ori"][t], obs["gripper_states"][t]])
        return dict(agentview=imgs[0], wrist=imgs[1], proprio=proprio.astype(np.float32),
                    instruction=self.instructions[fi], actions=acts, action_mask=mask,
                    demo=d, t=t)

    def close(self) -> None:
        """Close this process's file handles."""
        for h in self._handles.values():
            h.close()
        self._handles = {}
