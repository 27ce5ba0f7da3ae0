"""The ledger adapter and atomic writes; the device probe on a CPU host."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gpupipe import schema
from gpupipe.device import DeviceError, resolve_device
from gpupipe.table import Ledger, codes_array, write_parquet_atomic


def test_cpu_device_and_probe():
    dev = resolve_device("cpu")
    assert dev.kind == "cpu" and dev.dali_device_id is None and dev.decoder == "cpu"
    assert dev.xp is np and dev.df.__name__ == "pandas" and dev.torch_device == "cpu"
    auto = resolve_device("auto")
    if not auto.is_gpu:
        assert "no working GPU" in auto.note
        with pytest.raises(DeviceError, match="no working GPU"):
            resolve_device("gpu")
    with pytest.raises(ValueError):
        resolve_device("tpu")


def test_assign_keeps_declared_dtypes_and_nulls(tmp_path):
    ledger = Ledger(resolve_device("cpu"))
    frame = ledger.from_arrow(pa.table({schema.SAMPLE_ID: pa.array([5, 6, 7], pa.int64())}))
    frame = ledger.assign(frame, {
        schema.DEDUP_GROUP: (np.array([5, 5, 0]), np.array([True, True, False])),
        schema.DEDUP_KIND: (np.array(["representative", "bytes", None], dtype=object), np.array([True, True, False])),
        schema.DEDUP_KEEP: (np.array([True, False, False]), None),
    })
    t = ledger.to_arrow(frame)
    assert t.schema.field(schema.DEDUP_GROUP).type == pa.int64()
    assert t.column(schema.DEDUP_GROUP).to_pylist() == [5, 5, None]
    assert t.column(schema.DEDUP_KIND).to_pylist() == ["representative", "bytes", None]
    assert ledger.codes(frame, schema.DEDUP_KIND).tolist() == [0, 1, -1]
    ledger.write(frame, tmp_path / "l.parquet")
    assert pq.read_table(tmp_path / "l.parquet").equals(t)


def test_codes_array_takes_what_cudf_factorize_returns():
    # cuDF's Series.factorize returns (cupy.ndarray of the narrowest int type, Index);
    # the adapter widens that array as is (a numpy stand-in here: the same array API).
    codes = np.array([0, -1, 1, 1, -1], dtype=np.int8)
    out = codes_array(codes, np)
    assert out.dtype == np.int64 and out.tolist() == [0, -1, 1, 1, -1]


@pytest.mark.gpu
def test_ledger_codes_on_gpu_match_cpu():
    cpu, gpu = Ledger(resolve_device("cpu")), Ledger(resolve_device("gpu"))
    t = pa.table({schema.LABEL: pa.array(["b", None, "a", "b", None], pa.string())})
    want = cpu.codes(cpu.from_arrow(t), schema.LABEL).tolist()
    got = gpu.device.to_host(gpu.codes(gpu.from_arrow(t), schema.LABEL)).tolist()
    assert want == got == [0, -1, 1, 0, -1]


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "ledger.parquet"
    good = pa.table({"a": [1, 2]})
    write_parquet_atomic(good, path)

    with pytest.raises(Exception):
        write_parquet_atomic("not a table", path)      # fails inside the write
    assert pq.read_table(path).equals(good)
    assert [p.name for p in tmp_path.iterdir()] == ["ledger.parquet"]   # no temp file left


def test_npy_rows_reads_what_indexing_gives(tmp_path):
    from gpupipe.io.rows import NpyRows

    a = np.random.default_rng(0).integers(0, 255, (1000, 32, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "t.npy", a)
    r = NpyRows(tmp_path / "t.npy")
    assert r.shape == a.shape and r.ndim == 4 and len(r) == 1000
    idx = np.array([5, 6, 7, 999, 0, 6, 500, 501])
    assert np.array_equal(r[idx], a[idx])
    near = np.array([30, 20, 36, 52, 53, 90, 20])          # gaps under and over NpyRows.GAP_ROWS
    assert np.array_equal(r[near], a[near])
    assert np.array_equal(r[10:20], a[10:20]) and np.array_equal(r[::97], a[::97])
    assert r[np.zeros(0, np.int64)].shape == (0, 32, 32, 3)
    with pytest.raises(IndexError):
        r[np.array([1000])]
