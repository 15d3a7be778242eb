"""Hypothesis strategies of what a peer can send prevla's nodes (the fuzz suite's messages).

Every field stays within its ROS type (a peer cannot put more on the wire) and messages are
serialized and deserialized the way a subscriber receives them (:func:`wire`); within that,
anything goes: NaN and infinities, declared sizes up to 2**32 that contradict the data, empty
and junk strings, a stamp's nanosec >= 1e9. Used by ``tests/unit/test_fuzz_conversions.py``
and ``tests/ros/test_fuzz_inputs.py``.
"""
from __future__ import annotations

import math

from builtin_interfaces.msg import Time
from geometry_msgs.msg import Pose
from hypothesis import strategies as st
from prevla_interfaces.msg import ActionChunk as ChunkMsg
from prevla_interfaces.msg import CandidateSet as SetMsg
from prevla_interfaces.msg import SimState
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import Image, JointState

from prevla_ros import conversions as cv



def weighted(*choices: tuple[int, st.SearchStrategy]) -> st.SearchStrategy:
    """One of the strategies, drawn in proportion to its weight. (``st.one_of`` with a branch
    repeated does not weigh it: hypothesis explores whichever branch still yields new
    examples.)"""
    table = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.integers(0, len(table) - 1).flatmap(table.__getitem__)


U8, U32 = st.integers(0, 255), st.integers(0, 2**32 - 1)
I32 = st.integers(-2**31, 2**31 - 1)
#: Any float64 / float32 value, NaN and infinities included; and "reasonable" ones, so that the
#: success paths are reached too.
ANY_F64 = st.floats(allow_nan=True, allow_infinity=True)
F32_MAX = 3.4028234663852886e38
#: (Finite bounds: an unbounded width-32 draw rejects whatever overflows float32, and a list
#: of them then rejects the whole example.)
ANY_F32 = st.one_of(st.floats(-F32_MAX, F32_MAX, width=32),
                    st.sampled_from([math.nan, math.inf, -math.inf]))
SMALL = st.floats(-1.5, 1.5, width=32)
#: Actions a controller takes ([-1, 1]): a chunk of them is a valid chunk.
UNIT = st.floats(-1.0, 1.0, width=32)
F32_VALUES = weighted((2, SMALL), (1, ANY_F32))
F64_VALUES = st.one_of(st.floats(-3.0, 3.0), ANY_F64)
#: ROS strings are C strings on the wire: a peer cannot send a NUL character.
TEXT_CHARS = st.characters(codec="utf-8", exclude_characters="\x00")
TEXT = st.text(TEXT_CHARS, max_size=12)
#: Declared sizes: mostly small, sometimes anything a uint32 holds (MOSTLY_SMALL: rarely).
SMALL_SIZE = st.integers(0, 12)
SIZE = weighted((2, SMALL_SIZE), (1, U32))
MOSTLY_SMALL = weighted((5, SMALL_SIZE), (1, U32))
JOINTS = cv.ARM_JOINTS + cv.FINGER_JOINTS
#: A peer's stamp: any int32 seconds and uint32 nanoseconds (>= 1e9 is malformed, yet on the
#: wire), with the edges of both drawn often.
PEER_TIME = st.builds(Time, sec=st.one_of(I32, st.integers(2**31 - 3, 2**31 - 1)),
                      nanosec=st.one_of(U32, st.integers(10**9 - 2, 2**32 - 1)))
STAMPS = st.integers(0, 2**40)


def wire(msg):
    """``msg`` as a subscriber receives it: serialized and deserialized by rclpy."""
    return deserialize_message(serialize_message(msg), type(msg))


@st.composite
def image_msgs(draw):
    """Any Image a peer can send; half of them with data that fits the declared rows."""
    h, w = draw(SIZE), draw(SIZE)
    step = draw(st.one_of(st.just(0), st.integers(0, 40), U32))
    encoding = draw(st.one_of(st.sampled_from(["rgb8", "bgr8", "mono8", "rgba8", ""]), TEXT))
    rows = step or w * 3
    if draw(st.booleans()) and h * rows <= 4096:
        data = draw(st.binary(min_size=h * rows, max_size=h * rows))
    else:
        data = draw(st.binary(max_size=300))
    return wire(Image(header=cv.header(draw(STAMPS)), height=h, width=w, step=step,
                      encoding=encoding, data=data, is_bigendian=draw(U8)))


@st.composite
def joint_state_msgs(draw):
    """Any JointState: the nine joints in any order, or any names; as many positions or not."""
    names = draw(st.one_of(st.permutations(JOINTS).map(list),
                           st.lists(st.one_of(st.sampled_from(JOINTS), TEXT), max_size=12)))
    n = len(names) + draw(st.sampled_from([0, 0, 0, -1, 1, 3]))
    position = draw(st.lists(F64_VALUES, min_size=max(0, n), max_size=max(0, n)))
    return wire(JointState(header=cv.header(draw(STAMPS), ""), name=names, position=position,
                           velocity=draw(st.lists(ANY_F64, max_size=3))))


def pose(values) -> Pose:
    """A Pose of seven values: position x, y, z, orientation x, y, z, w."""
    msg = Pose()
    (msg.position.x, msg.position.y, msg.position.z, msg.orientation.x, msg.orientation.y,
     msg.orientation.z, msg.orientation.w) = values
    return msg


POSES = st.lists(F64_VALUES, min_size=7, max_size=7).map(pose)


@st.composite
def sim_state_msgs(draw, names=TEXT):
    """Any SimState: object names (from ``names``) and poses, as many of each or not."""
    return wire(SimState(header=cv.header(draw(STAMPS)),
                         object_names=draw(st.lists(names, max_size=4)),
                         object_poses=draw(st.lists(POSES, max_size=4))))


@st.composite
def chunk_msgs(draw, max_values: int = 48, stamp: int | None = None, sizes=SIZE):
    """Any ActionChunk a peer can send (horizon and action_dim from ``sizes``, often 7 wide);
    often with data that fits its declared shape, half of them with actions in [-1, 1] only."""
    h, d = draw(sizes), draw(st.one_of(st.just(7), sizes))
    n = h * d if h * d <= max_values and draw(st.booleans()) else draw(st.integers(0, max_values))
    values = draw(st.sampled_from([UNIT, F32_VALUES]))
    return wire(ChunkMsg(header=cv.header(draw(STAMPS) if stamp is None else stamp),
                         horizon=h, action_dim=d,
                         data=draw(st.lists(values, min_size=n, max_size=n)),
                         source=draw(TEXT)))


@st.composite
def candidate_set_msgs(draw, max_k: int = 6, stamp: int | None = None, sizes=SIZE):
    """Any CandidateSet: up to ``max_k`` candidates of :func:`chunk_msgs`, metadata lists of
    any length."""
    k = draw(st.integers(0, max_k))
    return wire(SetMsg(
        header=cv.header(draw(STAMPS) if stamp is None else stamp),
        candidates=[draw(chunk_msgs(stamp=stamp, sizes=sizes)) for _ in range(k)],
        temperatures=draw(st.lists(ANY_F32, max_size=max_k + 2)),
        seeds=draw(st.lists(U32, max_size=max_k + 2)), policy_id=draw(TEXT), round=draw(U32)))


class Unreadable:
    """A sequence whose length is known but whose items must never be read (O(1) checks)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        raise AssertionError("an over-limit message was iterated")

    def __getitem__(self, i):
        raise AssertionError("an over-limit message was read")
