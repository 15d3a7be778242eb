"""Property-based tests (hypothesis) of every message conversion (issue 17, item 6):
``conversions.py`` (ROS messages <-> runtime types) and ``msgpack_numpy.py`` (the remote
policy's wire format), fed what a peer can send (:mod:`tests.strategies`: every field within
its ROS type, serialized and deserialized as a subscriber receives it; NaN / inf, wrong and
huge declared sizes, sizes that contradict the data, empty and junk strings).

The properties:
- round trips preserve values (stamps, images rgb8/bgr8 with padded rows, joint states in any
  order, poses, object poses, chunks bit for bit, candidate sets, verdicts, msgpack arrays);
- every ``msg_to_*`` conversion either converts to what its docstring promises or raises
  ``ValueError``, never another exception, in work bounded by the data that came (never by the
  sizes a message declares); msgpack frames and policy replies likewise.
The nodes' input paths: ``test_fuzz_input_paths.py``; over real rclpy:
``tests/ros/test_fuzz_inputs.py``.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from prevla_interfaces.msg import SimState
from sensor_msgs.msg import Image

from prevla_ros import conversions as cv
from prevla_ros.runtime import chunks as rchunks
from prevla_ros.runtime import limits as lim
from prevla_ros.runtime import msgpack_numpy
from prevla_ros.runtime.limits import InputLimits
from prevla_ros.runtime.types import ACTION_DIM, ActionChunk, CandidateSet, ObjectPose
from tests.strategies import (ANY_F32, ANY_F64, F32_VALUES, F64_VALUES, JOINTS, PEER_TIME, SIZE,
                              TEXT, U32, candidate_set_msgs, chunk_msgs, image_msgs,
                              joint_state_msgs, pose, weighted, wire)

FAST = settings(max_examples=100, deadline=None)
SLOWER = settings(max_examples=50, deadline=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# --- time -------------------------------------------------------------------------------------
@FAST
@given(st.integers(lim.MIN_STAMP_NS, lim.MAX_STAMP_NS))
def test_stamps_round_trip_through_time(stamp):
    t = wire(cv.to_time(stamp))
    assert 0 <= t.nanosec < 10**9 and -2**31 <= t.sec < 2**31
    assert cv.from_time(t) == stamp
    assert cv.from_time(wire(cv.header(stamp, "f")).stamp) == stamp


@FAST
@given(st.one_of(st.integers(max_value=lim.MIN_STAMP_NS - 1),
                 st.integers(min_value=lim.MAX_STAMP_NS + 1)))
def test_a_stamp_no_time_can_carry_is_a_value_error_not_a_wrapped_time(stamp):
    with pytest.raises(ValueError, match="builtin_interfaces/Time"):
        cv.to_time(stamp)


@FAST
@given(PEER_TIME, st.one_of(st.just(0), st.integers(0, lim.MAX_STAMP_NS)), st.floats(0.0, 100.0))
@example(Time(sec=2**31 - 1, nanosec=2**32 - 1), 0, 1.0)  # sim time before /clock
def test_any_peer_stamp_the_guard_admits_can_be_answered(t, now_ns, max_future_s):
    """A peer's Time (nanosec may be >= 1e9 on the wire) converts; if the guard lets it through
    (whatever the node's clock, 0 included: sim time before /clock), an answer can carry it."""
    stamp = cv.from_time(wire(t))
    assert isinstance(stamp, int)
    if lim.future_problem(stamp, now_ns, max_future_s) is None:
        assert cv.from_time(wire(cv.to_time(stamp))) == stamp


# --- images -----------------------------------------------------------------------------------
@st.composite
def rgb_images(draw, max_side: int = 9):
    h, w = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    return draw(hnp.arrays(np.uint8, (h, w, 3)))


@FAST
@given(rgb_images(), st.sampled_from(["rgb8", "bgr8"]), st.integers(0, 7), st.integers(0, 2**40))
def test_images_round_trip_with_either_encoding_and_padded_rows(rgb, encoding, pad, stamp):
    if encoding == "rgb8" and pad == 0:
        msg = cv.image_to_msg(rgb, stamp, "cam")
    else:
        h, w, _ = rgb.shape
        pixels = rgb[..., ::-1] if encoding == "bgr8" else rgb
        rows = np.concatenate([pixels.reshape(h, w * 3), np.full((h, pad), 7, np.uint8)], 1)
        msg = Image(header=cv.header(stamp, "cam"), height=h, width=w, encoding=encoding,
                    step=w * 3 + pad, data=rows.tobytes())
    back = cv.msg_to_image(wire(msg), expected_hw=rgb.shape[:2])
    np.testing.assert_array_equal(back, rgb)
    assert back.dtype == np.uint8 and back.flags.writeable


@FAST
@given(image_msgs(), st.one_of(st.none(), st.tuples(SIZE, SIZE)),
       st.integers(1, 64))
def test_any_image_message_converts_or_is_a_value_error_in_work_bounded_by_its_data(
        msg, expected_hw, side):
    """Declared sizes up to 2**32 x 2**32 never allocate what they declare: only the data that
    came is read; and what the guard admits is bounded by limit_image_side."""
    problem = lim.image_problem(msg, InputLimits(limit_image_side=side))
    try:
        image = cv.msg_to_image(msg, expected_hw)
    except ValueError:
        return
    h, w = msg.height, msg.width
    assert image.shape == (h, w, 3) and image.dtype == np.uint8
    assert msg.encoding in ("rgb8", "bgr8") and image.nbytes <= len(msg.data)
    if problem is None:
        assert h <= side and w <= side


@FAST
@given(hnp.arrays(st.sampled_from([np.float32, np.float64, np.uint8, np.int16]),
                  hnp.array_shapes(min_dims=1, max_dims=4, max_side=4)))
def test_image_to_msg_refuses_anything_but_hxwx3_uint8(array):
    assume(not (array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3))
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        cv.image_to_msg(array, 0, "cam")


# --- robot state ------------------------------------------------------------------------------
@FAST
@given(hnp.arrays(np.float64, 7, elements=st.floats(-10, 10)),
       hnp.arrays(np.float64, 2, elements=st.floats(-1, 1)), st.randoms(use_true_random=False),
       st.lists(st.text(min_size=1, max_size=5).filter(lambda n: n not in JOINTS), max_size=3))
def test_joint_states_round_trip_by_name_in_any_order_with_extras(joints, fingers, rng, extra):
    msg = cv.joint_state_to_msg(joints, fingers, 5)
    pairs = list(zip(msg.name, msg.position)) + [(n, 0.0) for n in dict.fromkeys(extra)]
    rng.shuffle(pairs)
    msg.name, msg.position = [n for n, _ in pairs], [p for _, p in pairs]
    j, f = cv.msg_to_joint_state(wire(msg))
    np.testing.assert_array_equal(j, joints)
    np.testing.assert_array_equal(f, fingers)


@FAST
@given(joint_state_msgs())
def test_any_joint_state_converts_to_finite_joints_or_is_a_value_error(msg):
    try:
        joints, fingers = cv.msg_to_joint_state(msg)
    except ValueError:
        return
    assert joints.shape == (7,) and fingers.shape == (2,)
    assert np.all(np.isfinite(joints)) and np.all(np.isfinite(fingers))
    assert len(msg.name) == len(msg.position)


@FAST
@given(hnp.arrays(np.float64, 3, elements=st.floats(-1e6, 1e6)),
       hnp.arrays(np.float64, 4, elements=st.floats(-1, 1)), st.integers(0, 2**40))
def test_poses_round_trip(pos, quat, stamp):
    msg = wire(cv.eef_to_msg(pos, quat, stamp))
    assert cv.from_time(msg.header.stamp) == stamp
    p, q = cv.msg_to_pose(msg.pose)
    np.testing.assert_array_equal(p, pos)
    np.testing.assert_array_equal(q, quat)


@FAST
@given(st.lists(F64_VALUES, min_size=7, max_size=7))
def test_any_pose_converts_to_finite_values_or_is_a_value_error(values):
    try:
        pos, quat = cv.msg_to_pose(wire(pose(values)))
    except ValueError:
        assert not all(math.isfinite(v) for v in values)
        return
    assert np.all(np.isfinite(pos)) and np.all(np.isfinite(quat))
    assert [*pos, *quat] == values


@FAST
@given(st.dictionaries(TEXT, st.tuples(
    hnp.arrays(np.float64, 3, elements=st.floats(-10, 10)),
    hnp.arrays(np.float64, 4, elements=st.floats(-1, 1))), max_size=6))
def test_object_poses_round_trip(objects):
    poses = {name: ObjectPose(pos, quat) for name, (pos, quat) in objects.items()}
    back = cv.msg_to_sim_state(wire(cv.sim_state_to_msg(poses, 3)))
    assert list(back) == list(poses)
    for name, p in poses.items():
        np.testing.assert_array_equal(back[name].pos, p.pos)
        np.testing.assert_array_equal(back[name].quat_xyzw, p.quat_xyzw)


@FAST
@given(st.lists(TEXT, max_size=6), st.lists(st.lists(F64_VALUES, min_size=7, max_size=7),
                                            max_size=6))
def test_any_sim_state_converts_to_finite_object_poses_or_is_a_value_error(names, poses):
    msg = wire(SimState(object_names=names, object_poses=[pose(v) for v in poses]))
    try:
        objects = cv.msg_to_sim_state(msg)
    except ValueError:
        return
    assert len(names) == len(poses) and set(objects) == set(names)
    assert all(np.all(np.isfinite(p.pos)) and np.all(np.isfinite(p.quat_xyzw))
               for p in objects.values())


# --- chunks and candidate sets ----------------------------------------------------------------
@FAST
@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=2, max_side=16),
                  elements=ANY_F32), TEXT, st.integers(0, 2**40))
def test_chunks_round_trip_bit_for_bit(actions, source, stamp):
    back = cv.msg_to_chunk(wire(cv.chunk_to_msg(ActionChunk(actions, source, stamp))),
                           expected_dim=actions.shape[1])
    assert back.actions.dtype == np.float32 and back.actions.shape == actions.shape
    np.testing.assert_array_equal(back.actions, actions)  # NaN == NaN here, as bits go
    assert back.source == source and back.stamp_ns == stamp


@FAST
@given(chunk_msgs(), st.one_of(st.none(), st.integers(1, 9)))
def test_any_chunk_message_converts_to_its_declared_shape_or_is_a_value_error(msg, dim):
    msg = wire(msg)
    try:
        chunk = cv.msg_to_chunk(msg, expected_dim=dim)
    except ValueError:
        return
    assert chunk.actions.shape == (msg.horizon, msg.action_dim) >= (1, 1)
    assert dim is None or msg.action_dim == dim
    assert chunk.actions.dtype == np.float32 and chunk.stamp_ns == cv.from_time(msg.header.stamp)


@FAST
@given(st.lists(st.tuples(hnp.arrays(np.float32, st.tuples(st.integers(1, 6), st.integers(1, 8)),
                                     elements=ANY_F32), TEXT), max_size=5),
       st.lists(ANY_F32, max_size=6), st.lists(U32, max_size=6), TEXT, U32,
       st.integers(0, 2**40))
def test_candidate_sets_round_trip(chunks, temperatures, seeds, policy_id, round_, stamp):
    cs = CandidateSet([ActionChunk(a, src, stamp) for a, src in chunks], temperatures, seeds,
                      policy_id, stamp, round_)
    msg = wire(cv.candidates_to_msg(cs))
    assert cv.from_time(msg.header.stamp) == stamp and msg.policy_id == policy_id
    assert msg.round == round_ and list(msg.seeds) == seeds
    np.testing.assert_array_equal(np.array(msg.temperatures, np.float32),
                                  np.array(temperatures, np.float32))
    arrays = cv.msg_to_candidate_arrays(msg)
    assert len(arrays) == len(chunks)
    for back, (a, src), c in zip(arrays, chunks, msg.candidates):
        np.testing.assert_array_equal(back, a)
        assert c.source == src and cv.from_time(c.header.stamp) == stamp


@FAST
@given(candidate_set_msgs())
def test_any_candidate_set_converts_one_array_per_candidate(msg):
    arrays = cv.msg_to_candidate_arrays(msg)
    assert len(arrays) == len(msg.candidates)
    for a, c in zip(arrays, msg.candidates):
        assert a.dtype == np.float32 and a.size == len(c.data)
        fits = c.horizon >= 1 and c.action_dim >= 1 and len(c.data) == c.horizon * c.action_dim
        # a candidate that does not fit its declared shape stays flat: the scheduler rejects it
        assert a.shape == ((c.horizon, c.action_dim) if fits else (len(c.data),))
        if not fits:
            assert rchunks.chunk_problem(a) is not None


# --- verdicts, paths, diagnostics -------------------------------------------------------------
@FAST
@given(hnp.arrays(np.float64, 3, elements=st.floats(-5, 5)),
       hnp.arrays(np.float32, st.tuples(st.integers(1, 20), st.integers(3, 9)),
                  elements=F32_VALUES), st.integers(0, 2**40))
def test_commanded_paths_move_at_most_one_scaled_step_per_action(eef, actions, stamp):
    actions = np.nan_to_num(actions, nan=0.0, posinf=1e30, neginf=-1e30)  # a valid chunk's
    path = cv.chunk_path(eef, actions)
    assert path.shape == (len(actions) + 1, 3) and np.all(np.isfinite(path))
    steps = np.abs(np.diff(path, axis=0))
    assert np.all(steps <= cv.OSC_POS_SCALE * (1 + 1e-6))  # float32 actions
    markers = wire(cv.path_markers(path, stamp, "ns", (0.1, 0.2, 0.3, 1.0)))
    line, end = markers.markers
    assert len(line.points) == len(path) and cv.from_time(end.header.stamp) == stamp


@FAST
@given(st.dictionaries(TEXT, st.one_of(ANY_F64, st.integers(), TEXT, st.booleans()),
                       max_size=8), TEXT)
def test_diagnostic_values_are_kept_as_strings(values, message):
    status = wire(cv.diagnostic_status("prevla: x", "/x", b"\x01", message, values))
    assert [(kv.key, kv.value) for kv in status.values] == [(k, str(v)) for k, v in values.items()]
    assert status.message == message


# --- msgpack (remote policy wire format) ------------------------------------------------------
WIRE_DTYPES = st.one_of(hnp.boolean_dtypes(), hnp.integer_dtypes(), hnp.unsigned_integer_dtypes(),
                        hnp.floating_dtypes(sizes=(16, 32, 64)))


@FAST
@given(st.dictionaries(TEXT, hnp.arrays(WIRE_DTYPES, hnp.array_shapes(min_dims=0, max_dims=3,
                                                                      min_side=0, max_side=4)),
                       max_size=3), st.integers(-2**63, 2**64 - 1), ANY_F64)
def test_msgpack_arrays_and_scalars_round_trip(arrays, big, value):
    with np.errstate(over="ignore"):  # a float64 beyond float32's range is inf there
        scalar = np.float32(value)
    back = msgpack_numpy.unpackb(msgpack_numpy.packb({"a": arrays, "i": big, "f": value,
                                                      "s": scalar}))
    assert set(back["a"]) == set(arrays) and back["i"] == big
    for key, a in arrays.items():
        assert back["a"][key].dtype == a.dtype and back["a"][key].shape == a.shape
        np.testing.assert_array_equal(back["a"][key], a)
    assert back["f"] == value or (math.isnan(value) and math.isnan(back["f"]))
    assert isinstance(back["s"], np.float32)
    np.testing.assert_array_equal(back["s"], scalar)


MSGPACK_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), ANY_F64, TEXT,
              st.binary(max_size=16)),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.one_of(TEXT, st.binary(max_size=4)), inner,
                                            max_size=3)),
    max_leaves=8)


SCALARS = st.one_of(st.integers(-2**63, 2**64 - 1), st.integers(-300, 300), ANY_F64,
                    st.booleans(), st.none(), TEXT, st.binary(max_size=8))


@st.composite
def array_maps(draw):
    """openpi's array / scalar maps as a peer may fill them: any dtype string, shape and data
    (mostly real dtypes and plain scalars, so the decoding itself is reached)."""
    dtype = draw(st.one_of(st.sampled_from(["<f4", "<f8", "<f2", "|i1", "<i8", "<u2", "<u8",
                                            "|b1", "<U0", "<U2", "|S0", "|S3", "<M8[s]", "<m8",
                                            "|O", "<c8", "|V4"]), TEXT, MSGPACK_VALUES))
    if draw(st.booleans()):
        shape = draw(st.one_of(st.lists(st.one_of(st.integers(0, 5), st.integers(0, 2**64 - 1)),
                                        max_size=4), MSGPACK_VALUES))
        return {b"__ndarray__": True, b"dtype": dtype, b"shape": shape,
                b"data": draw(st.one_of(st.binary(max_size=40), MSGPACK_VALUES))}
    return {b"__npgeneric__": True, b"dtype": dtype,
            b"data": draw(weighted((2, SCALARS), (1, MSGPACK_VALUES)))}


@FAST
@given(st.one_of(array_maps(), st.lists(array_maps(), max_size=3),
                 st.dictionaries(TEXT, array_maps(), max_size=2)))
def test_any_array_map_from_a_peer_decodes_or_is_a_value_error(obj):
    import msgpack

    frame = msgpack.packb(obj, use_bin_type=True)
    try:
        out = msgpack_numpy.unpackb(frame)
    except ValueError:
        return

    def check(value):
        if isinstance(value, np.ndarray):
            assert value.dtype.kind in msgpack_numpy.ALLOWED_KINDS and not value.dtype.hasobject
        if isinstance(value, np.generic):
            assert value.dtype.kind in msgpack_numpy.ALLOWED_KINDS
        for item in (value.values() if isinstance(value, dict) else
                     value if isinstance(value, list) else ()):
            check(item)

    check(out)


@FAST
@given(st.binary(max_size=64))
def test_any_bytes_decode_or_are_a_value_error(frame):
    try:
        msgpack_numpy.unpackb(frame)
    except ValueError:
        pass


@FAST
@given(st.one_of(MSGPACK_VALUES, st.dictionaries(st.just("actions"), st.one_of(
    MSGPACK_VALUES, hnp.arrays(WIRE_DTYPES, hnp.array_shapes(min_dims=0, max_dims=4, max_side=9),
                               elements=None)), min_size=1)),
       st.integers(1, 4))
def test_any_policy_reply_gives_finite_chunks_or_a_value_error(reply, k):
    from prevla_ros.runtime.remote_policy import RemotePolicyConfig, WebsocketPolicy

    policy = WebsocketPolicy(RemotePolicyConfig(url="ws://127.0.0.1:9", horizon=3))
    reply = msgpack_numpy.unpackb(msgpack_numpy.packb(reply))  # as it comes off the wire
    try:
        chunks = policy._chunks(reply, k)
    except ValueError:
        return
    assert chunks.dtype == np.float32 and chunks.shape[1:] == (3, ACTION_DIM)
    assert chunks.shape[0] in (1, k) and np.all(np.isfinite(chunks))

