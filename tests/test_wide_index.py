"""64-bit element offsets (issue 11, item 4).

Past 2^31 - 1 elements a plan builds its kernels with INDEX_64 (offsets and strides
as long).  No device here can hold such a tensor (the PoCL devices allocate at most
4 GiB, i.e. indices below 2^30 floats), so these tests lower the threshold
(tensors.WIDE_INDEX_ABOVE) and run the 64-bit builds on small tensors against the
float64 reference, on every device, every algorithm and dtype: what a tensor past
the limit would run.  A view reaching past the threshold sends a narrow plan to its
64-bit twin.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import (
    algorithms_computing,
    assert_close,
    backprop_input_reference,
    conv2d_case,
    conv2d_reference,
    random_array,
    reduction_length,
)

import clconv
from clconv import plans, tensors
from clconv.device_select import runtime
from clconv.errors import UnimplementedError
from clconv.shapes import ConvGeometry

DTYPES = (np.float16, np.float32, np.float64)


@pytest.fixture
def wide_everywhere(monkeypatch):
    """Every plan built in the test indexes in 64 bits."""
    monkeypatch.setattr(tensors, "WIDE_INDEX_ABOVE", 0)
    plans.forget_all()
    yield
    plans.forget_all()


def _dtypes(device):
    return [d for d in DTYPES if d != np.float64 or device.fp64]


@pytest.mark.parametrize("data_format", ["NHWC", "NCHW"])
@pytest.mark.parametrize("groups", [1, 2])
def test_64_bit_builds_give_the_references_values(device, spec, wide_everywhere, data_format,
                                                  groups):
    rt = runtime(spec)
    channels_last = data_format == "NHWC"
    x_shape = (2, 5, 6, 4) if channels_last else (2, 4, 5, 6)
    w_shape = (3, 3, 4 // groups, 6)
    conv = conv2d_case(x_shape, w_shape, 2, "SAME", data_format)
    # The input gradient of a 6-channel conv (its forward geometry: TF's backprop op
    # refuses grouped filters on CPU, the plans compute them).
    tw_shape = (3, 3, 6 // groups, 4)
    back = conv2d_case((1, 6, 6, 6), tw_shape, 2, "SAME", data_format)
    for dtype in _dtypes(device):
        x, w = random_array(x_shape, dtype, 1), random_array(w_shape, dtype, 2)
        dy, tw = random_array(back.y_shape(), dtype, 3), random_array(tw_shape, dtype, 4)
        for algorithm in algorithms_computing("conv2d", groups, rt.info, dtype):
            plan = plans.build_plan(rt, "conv2d", conv, dtype, algorithm)
            assert plan.wide and "64-bit indices" in plan.describe()
            assert_close(plan.execute(x, w), conv2d_reference(x, w, conv), dtype,
                         reduction_length(conv))
        for algorithm in algorithms_computing("conv2d_backprop_input", groups, rt.info,
                                              dtype):
            plan = plans.build_plan(rt, "conv2d_backprop_input", back, dtype, algorithm)
            assert plan.wide
            assert_close(plan.execute(dy, tw), backprop_input_reference(dy, tw, back), dtype,
                         reduction_length(back, transpose=True))


def test_64_bit_bias_and_3d_paths(device, spec, wide_everywhere):
    """The PyTorch front end's device-side bias and the 3-D depth copies."""
    pytest.importorskip("torch")
    import pyopencl.array as cl_array
    import torch

    from clconv import pytorch as clconv_torch

    queue = runtime(spec).queue
    x, w, b = (random_array(s, np.float32, i) for i, s in
               enumerate(((1, 3, 5, 5), (4, 3, 3, 3), (4,))))
    expected = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w),
                                          torch.from_numpy(b), padding=1).numpy()
    got = clconv_torch.conv2d(cl_array.to_device(queue, x), cl_array.to_device(queue, w),
                              cl_array.to_device(queue, b), padding=1, device=spec)
    assert_close(got.get(), expected, np.float32, 27)
    v = random_array((1, 4, 5, 5, 2), np.float32, 5)
    k = random_array((2, 3, 3, 2, 3), np.float32, 6)
    expected3 = torch.nn.functional.conv3d(
        torch.from_numpy(np.moveaxis(v, -1, 1)), torch.from_numpy(np.moveaxis(k, (3, 4), (1, 0))),
        padding="same").numpy()
    got3 = clconv.conv3d(v, k, [1, 1, 1, 1, 1], "SAME", device=spec)
    assert_close(np.moveaxis(got3, -1, 1), expected3, np.float32, 2 * 3 * 3 * 2)


def test_a_view_past_the_threshold_runs_the_64_bit_twin(device, spec, monkeypatch):
    """A narrow plan handed a view whose elements lie past what int offsets reach
    (here: a lowered threshold) runs its 64-bit twin, prepared filters included."""
    import pyopencl.array as cl_array

    rt = runtime(spec)
    x, w = random_array((1, 6, 6, 4), seed=7), random_array((3, 3, 4, 5), seed=8)
    g = conv2d_case(x.shape, w.shape, 1, "SAME")
    expected = conv2d_reference(x, w, g)
    for algorithm in algorithms_computing("conv2d", 1, rt.info):
        plan = plans.build_plan(rt, "conv2d", g, np.float32, algorithm)
        assert not plan.wide
        prepared = plan.prepare_filters(w)
        # x placed 300 elements into a larger buffer: its view reaches element 444.
        backing = cl_array.zeros(rt.queue, 300 + x.size, np.float32)
        backing[300:] = cl_array.to_device(rt.queue, x.reshape(-1))
        view = backing[300:].reshape(x.shape)
        monkeypatch.setattr(tensors, "WIDE_INDEX_ABOVE", 400)
        assert_close(plan.execute(view, prepared).get(), expected, np.float32, 36)
        assert plan._wide_twin is not None and plan._wide_twin.wide, algorithm
        monkeypatch.setattr(tensors, "WIDE_INDEX_ABOVE", tensors.INT32_LIMIT)


def test_a_tensor_past_2_31_elements_plans_64_bit_and_pixel_counts_stay_32_bit():
    """The decision and the limits that remain, without allocating: element offsets
    go 64-bit past 2^31 - 1; pixel counts and the packed filter stay int."""
    big = ConvGeometry("NHWC", 1, 32768, 32768, 3, 3, 3, 32768, 32768, 3, 1, 1, 1, 1, 1, 1, 1, 1)
    assert big.x_size() > tensors.INT32_LIMIT and plans.needs_wide_index(big)
    small = ConvGeometry("NHWC", 8, 56, 56, 64, 3, 3, 56, 56, 64, 1, 1, 1, 1, 1, 1, 1, 1)
    assert not plans.needs_wide_index(small)
    plans._check_index_range("conv2d", big)  # 2^30 pixels: allowed
    too_many = ConvGeometry("NHWC", 3, 32768, 32768, 1, 1, 1, 32768, 32768, 1, 1, 1, 1, 1,
                            0, 0, 0, 0)
    with pytest.raises(UnimplementedError, match=r"3221225472 pixels .* 32-bit"):
        plans._check_index_range("conv2d", too_many)
    huge_filter = ConvGeometry("NHWC", 1, 8, 8, 32768, 1, 1, 8, 8, 32768, 1, 1, 1, 1, 0, 0, 0, 0)
    with pytest.raises(UnimplementedError, match=r"filter has 1073741824 elements"):
        plans._check_index_range("conv2d", huge_filter)
