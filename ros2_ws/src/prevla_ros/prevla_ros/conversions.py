"""Pure message <-> numpy conversions. No node state, no rclpy import: only message types.

Every ``msg_to_*`` function raises ``ValueError`` saying what was expected and what came,
so nodes can log one clear line and publish a safe outcome.
"""
from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point, Pose, PoseStamped
from prevla_interfaces.msg import ActionChunk as ActionChunkMsg
from prevla_interfaces.msg import CandidateSet as CandidateSetMsg
from prevla_interfaces.msg import SimState, Verdict
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Header
from visualization_msgs.msg import Marker, MarkerArray

from prevla_ros.runtime.limits import MAX_STAMP_NS, MIN_STAMP_NS
from prevla_ros.runtime.scheduler import Decision
from prevla_ros.runtime.types import ActionChunk, CandidateSet, ObjectPose

ARM_JOINTS = tuple(f"robot0_joint{i}" for i in range(1, 8))
FINGER_JOINTS = ("robot0_finger_joint1", "robot0_finger_joint2")
#: OSC_POSE scales a unit position action to this many metres per control step (robosuite
#: default output_max for LIBERO's controller). Used only to draw the commanded path.
OSC_POS_SCALE = 0.05


# --- time ---------------------------------------------------------------------------------
def to_time(stamp_ns: int) -> Time:
    """A stamp as a Time; ``ValueError`` for one no Time can carry (its int32 seconds would
    wrap on the wire: an answer would name another stamp)."""
    if not MIN_STAMP_NS <= stamp_ns <= MAX_STAMP_NS:
        raise ValueError(f"stamp {stamp_ns} ns is outside what builtin_interfaces/Time can "
                         f"carry ([{MIN_STAMP_NS}, {MAX_STAMP_NS}])")
    return Time(sec=int(stamp_ns // 1_000_000_000), nanosec=int(stamp_ns % 1_000_000_000))


def from_time(t: Time) -> int:
    return int(t.sec) * 1_000_000_000 + int(t.nanosec)


def header(stamp_ns: int, frame_id: str = "world") -> Header:
    return Header(stamp=to_time(stamp_ns), frame_id=frame_id)


# --- images -------------------------------------------------------------------------------
def image_to_msg(image: np.ndarray, stamp_ns: int, frame_id: str) -> Image:
    """An HxWx3 uint8 RGB array as an rgb8 ``sensor_msgs/Image``."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected HxWx3 uint8 RGB image, got {image.dtype} {image.shape}")
    h, w, _ = image.shape
    return Image(header=header(stamp_ns, frame_id), height=h, width=w, encoding="rgb8",
                 is_bigendian=0, step=w * 3, data=np.ascontiguousarray(image).tobytes())


def msg_to_image(msg: Image, expected_hw: tuple[int, int] | None = None) -> np.ndarray:
    """An rgb8/bgr8 ``sensor_msgs/Image`` as an HxWx3 uint8 RGB array (a copy)."""
    if msg.encoding not in ("rgb8", "bgr8"):
        raise ValueError(f"image encoding must be rgb8 or bgr8, got {msg.encoding!r}")
    h, w = int(msg.height), int(msg.width)
    if h == 0 or w == 0:
        raise ValueError(f"image has zero size {h}x{w}")
    if expected_hw is not None and (h, w) != tuple(expected_hw):
        raise ValueError(f"image size {h}x{w} != expected {expected_hw[0]}x{expected_hw[1]}")
    step = int(msg.step) if msg.step else w * 3
    if step < w * 3:
        raise ValueError(f"image step {step} < width*3 = {w * 3}")
    data = np.frombuffer(bytes(msg.data), dtype=np.uint8)
    if data.size != step * h:
        raise ValueError(f"image data has {data.size} bytes, expected step*height = {step * h}")
    image = data.reshape(h, step)[:, : w * 3].reshape(h, w, 3)
    return image[..., ::-1].copy() if msg.encoding == "bgr8" else image.copy()


# --- robot state --------------------------------------------------------------------------
def joint_state_to_msg(joints: np.ndarray, gripper_qpos: np.ndarray, stamp_ns: int) -> JointState:
    return JointState(header=header(stamp_ns, ""), name=list(ARM_JOINTS + FINGER_JOINTS),
                      position=[float(v) for v in np.concatenate([joints, gripper_qpos])])


def msg_to_joint_state(msg: JointState) -> tuple[np.ndarray, np.ndarray]:
    """(7,) arm joints and (2,) finger positions, by name (order-independent)."""
    position = dict(zip(msg.name, msg.position))
    missing = [n for n in ARM_JOINTS + FINGER_JOINTS if n not in position]
    if missing or len(msg.name) != len(msg.position):
        raise ValueError(f"joint_states must name {len(ARM_JOINTS + FINGER_JOINTS)} joints with "
                         f"one position each; missing {missing}, "
                         f"{len(msg.name)} names / {len(msg.position)} positions")
    values = np.array([position[n] for n in ARM_JOINTS + FINGER_JOINTS], dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise ValueError("joint_states contains non-finite positions")
    return values[:7], values[7:]


def pose_to_msg(pos: np.ndarray, quat_xyzw: np.ndarray) -> Pose:
    pose = Pose()
    pose.position.x, pose.position.y, pose.position.z = (float(v) for v in pos)
    (pose.orientation.x, pose.orientation.y, pose.orientation.z,
     pose.orientation.w) = (float(v) for v in quat_xyzw)
    return pose


def msg_to_pose(pose: Pose) -> tuple[np.ndarray, np.ndarray]:
    pos = np.array([pose.position.x, pose.position.y, pose.position.z])
    quat = np.array([pose.orientation.x, pose.orientation.y, pose.orientation.z,
                     pose.orientation.w])
    if not (np.all(np.isfinite(pos)) and np.all(np.isfinite(quat))):
        raise ValueError("pose contains non-finite values")
    return pos, quat


def eef_to_msg(pos: np.ndarray, quat_xyzw: np.ndarray, stamp_ns: int) -> PoseStamped:
    return PoseStamped(header=header(stamp_ns), pose=pose_to_msg(pos, quat_xyzw))


def sim_state_to_msg(objects: dict[str, ObjectPose], stamp_ns: int) -> SimState:
    return SimState(header=header(stamp_ns), object_names=list(objects),
                    object_poses=[pose_to_msg(p.pos, p.quat_xyzw) for p in objects.values()])


def msg_to_sim_state(msg: SimState) -> dict[str, ObjectPose]:
    if len(msg.object_names) != len(msg.object_poses):
        raise ValueError(f"sim_state has {len(msg.object_names)} names but "
                         f"{len(msg.object_poses)} poses")
    return {name: ObjectPose(*msg_to_pose(pose))
            for name, pose in zip(msg.object_names, msg.object_poses)}


# --- chunks -------------------------------------------------------------------------------
def chunk_to_msg(chunk: ActionChunk) -> ActionChunkMsg:
    actions = np.asarray(chunk.actions, dtype=np.float32)
    return ActionChunkMsg(header=header(chunk.stamp_ns), horizon=actions.shape[0],
                          action_dim=actions.shape[1], data=actions.ravel().tolist(),
                          source=chunk.source)


def msg_to_chunk(msg: ActionChunkMsg, expected_dim: int | None = None) -> ActionChunk:
    """Reshape ``data`` to (horizon, action_dim); raise ``ValueError`` if it does not fit."""
    h, d = int(msg.horizon), int(msg.action_dim)
    data = np.asarray(msg.data, dtype=np.float32)
    if h < 1 or d < 1:
        raise ValueError(f"chunk must have horizon >= 1 and action_dim >= 1, got {h}x{d}")
    if data.size != h * d:
        raise ValueError(f"chunk data has {data.size} values, expected horizon*action_dim = "
                         f"{h}*{d} = {h * d}")
    if expected_dim is not None and d != expected_dim:
        raise ValueError(f"chunk action_dim {d} != expected {expected_dim}")
    return ActionChunk(actions=data.reshape(h, d), source=msg.source,
                       stamp_ns=from_time(msg.header.stamp))


def candidates_to_msg(cs: CandidateSet) -> CandidateSetMsg:
    return CandidateSetMsg(header=header(cs.stamp_ns),
                           candidates=[chunk_to_msg(c) for c in cs.chunks],
                           temperatures=[float(t) for t in cs.temperatures],
                           seeds=[int(s) for s in cs.seeds], policy_id=cs.policy_id,
                           round=cs.round)


def msg_to_candidate_arrays(msg: CandidateSetMsg) -> list[np.ndarray]:
    """Every candidate as an array; a malformed one becomes an array the scheduler rejects
    (its length does not fit its declared shape, so it is kept flat, ndim 1)."""
    out = []
    for c in msg.candidates:
        data = np.asarray(c.data, dtype=np.float32)
        if c.horizon >= 1 and c.action_dim >= 1 and data.size == c.horizon * c.action_dim:
            out.append(data.reshape(int(c.horizon), int(c.action_dim)))
        else:
            out.append(data)
    return out


# --- verdicts, markers, diagnostics -------------------------------------------------------
def decision_to_verdict(decision: Decision, stamp_ns: int, mode: str,
                        verifier_id: str) -> Verdict:
    return Verdict(header=header(stamp_ns),
                   mode=Verdict.MODE_EXECUTE if mode == "execute" else Verdict.MODE_IMAGINE,
                   safety_probs=[float(v) for v in decision.safety_probs],
                   advantages=[float(v) for v in decision.advantages],
                   accepted_index=int(decision.accepted_index), outcome=decision.outcome,
                   reason=decision.reason, verifier_id=verifier_id,
                   samples_drawn=int(decision.samples_drawn), rounds=int(decision.rounds),
                   verify_ms=float(decision.verify_ms), total_ms=float(decision.total_ms))


def chunk_path(eef_pos: np.ndarray, actions: np.ndarray,
               scale: float = OSC_POS_SCALE) -> np.ndarray:
    """The end-effector path a chunk commands: (H+1, 3) points from the current position."""
    steps = np.clip(actions[:, :3], -1.0, 1.0) * scale
    return np.vstack([eef_pos[None, :], eef_pos[None, :] + np.cumsum(steps, axis=0)])


def path_markers(path: np.ndarray, stamp_ns: int, ns: str, rgba: tuple[float, ...],
                 frame_id: str = "world") -> MarkerArray:
    """A line strip plus a sphere at the end, for rviz."""
    line = Marker(header=header(stamp_ns, frame_id), ns=ns, id=0, type=Marker.LINE_STRIP,
                  action=Marker.ADD)
    line.scale.x = 0.005
    line.color.r, line.color.g, line.color.b, line.color.a = rgba
    line.pose.orientation.w = 1.0
    line.points = [Point(x=float(p[0]), y=float(p[1]), z=float(p[2])) for p in path]
    end = Marker(header=header(stamp_ns, frame_id), ns=ns, id=1, type=Marker.SPHERE,
                 action=Marker.ADD)
    end.scale.x = end.scale.y = end.scale.z = 0.02
    end.color = line.color
    end.pose = pose_to_msg(path[-1], np.array([0.0, 0.0, 0.0, 1.0]))
    return MarkerArray(markers=[line, end])


#: Verdict outcome -> (headline, RGBA) of its rviz text; the path colours (green / red) match.
VERDICT_STYLE = {"accepted": ("ACCEPTED", (0.1, 0.9, 0.2, 1.0)),
                 "fallback_best": ("FALLBACK", (1.0, 0.6, 0.0, 1.0)),
                 "hold": ("HOLD", (0.9, 0.2, 0.1, 1.0))}
#: Where the verdict text floats: this far above the end effector, or at ``VERDICT_HOME``
#: (above LIBERO's table) before any end-effector pose was seen.
VERDICT_LIFT_M = 0.15
VERDICT_HOME = (0.0, 0.0, 1.4)
VERDICT_REASON_CHARS = 80


def _score(values, index: int, fmt: str) -> str:
    """One candidate's score as text; ``n/a`` for a missing or unscored (NaN) one."""
    if not 0 <= index < len(values) or not np.isfinite(values[index]):
        return "n/a"
    return format(float(values[index]), fmt)


def verdict_text(verdict: Verdict, source: str) -> str:
    """What the verdict says, in three short lines (rviz draws them as one text marker)."""
    headline, _ = VERDICT_STYLE.get(verdict.outcome, (verdict.outcome.upper(), None))
    if verdict.mode == Verdict.MODE_IMAGINE:
        headline = f"imagine: {headline}"
    n, i = len(verdict.safety_probs), int(verdict.accepted_index)
    if 0 <= i < n:
        first = f"{headline} #{i} of {n} from {source}"
        second = (f"P(safe) {_score(verdict.safety_probs, i, '.2f')}  "
                  f"advantage {_score(verdict.advantages, i, '+.2f')}")
    else:
        first = f"{headline} ({n} candidates from {source})"
        reason = verdict.reason
        second = (reason if len(reason) <= VERDICT_REASON_CHARS
                  else reason[:VERDICT_REASON_CHARS - 3] + "...")
    third = (f"rounds {verdict.rounds}, samples {verdict.samples_drawn}, "
             f"{verdict.verifier_id} {verdict.verify_ms:.0f} ms")
    return "\n".join((first, second, third))


def verdict_text_marker(verdict: Verdict, source: str, frame_id: str = "world",
                        anchor: np.ndarray | None = None) -> Marker:
    """The verdict as an rviz TEXT_VIEW_FACING marker (rviz cannot show a custom message).

    Args:
        verdict: the published verdict (its stamp is the marker's).
        source: the policy that sampled the candidates (the candidate set's ``policy_id``).
        frame_id: the markers' frame (the verifier's ``marker_frame``, as for approved paths).
        anchor: the end effector's position: the text floats ``VERDICT_LIFT_M`` above it;
            ``None`` (no pose yet) puts it at ``VERDICT_HOME``.

    One marker per verifier (namespace ``verdict``, id 0), so each verdict replaces the last.
    Coloured by outcome: green accepted, orange fallback, red hold.
    """
    _, rgba = VERDICT_STYLE.get(verdict.outcome, ("", (1.0, 1.0, 1.0, 1.0)))
    where = (np.asarray(VERDICT_HOME, dtype=np.float64) if anchor is None
             else np.asarray(anchor, dtype=np.float64) + (0.0, 0.0, VERDICT_LIFT_M))
    marker = Marker(header=Header(stamp=verdict.header.stamp, frame_id=frame_id), ns="verdict",
                    id=0, type=Marker.TEXT_VIEW_FACING, action=Marker.ADD,
                    text=verdict_text(verdict, source))
    marker.pose = pose_to_msg(where, np.array([0.0, 0.0, 0.0, 1.0]))
    marker.scale.z = 0.03  # text height (m); rviz ignores x and y for text
    marker.color.r, marker.color.g, marker.color.b, marker.color.a = rgba
    return marker


def diagnostic_status(name: str, hardware_id: str, level: bytes, message: str,
                      values: dict[str, object]) -> DiagnosticStatus:
    """``level`` is one of DiagnosticStatus.OK/WARN/ERROR/STALE (bytes in ROS 2)."""
    return DiagnosticStatus(level=level, name=name, hardware_id=hardware_id,
                            message=message,
                            values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])
