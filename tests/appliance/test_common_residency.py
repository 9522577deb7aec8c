"""appliance.common.residency: the smaps parsing behind the release of load-only pages (the
release itself, with a real model, is tested in test_generation_genai.py).
"""

from __future__ import annotations

from pathlib import Path

from appliance.common.residency import file_mappings, release_load_only_pages, shared_objects


def test_residency_parses_smaps_and_skips_other_files(tmp_path: Path):
    weights = tmp_path / "model.onnx.data"
    weights.write_bytes(b"x")
    smaps = (
        f"7f0000000000-7f0000002000 rw-p 00000000 08:01 12 {weights}\n"
        "Size:                  8 kB\nRss:                   8 kB\nAnonymous:             0 kB\n"
        "7f0000002000-7f0000003000 rw-p 00000000 08:01 13 /usr/lib/libc.so.6\n"
        "Rss:                   4 kB\nAnonymous:             4 kB\n"
        f"7f0000003000-7f0000004000 rw-p 00002000 08:01 12 {weights}\n"
        "Rss:                   4 kB\nAnonymous:             4 kB\n"
    )
    assert file_mappings(weights, smaps) == [
        (0x7F0000000000, 0x7F0000002000, 8, 0),
        (0x7F0000003000, 0x7F0000004000, 4, 4),
    ]
    # A file this process has not mapped: nothing to release, nothing raised.
    assert release_load_only_pages([weights], libraries=False)["weights"]["mappings"] == 0


def test_residency_lists_shared_objects_only():
    smaps = (
        "7f0000000000-7f0000001000 r-xp 00000000 08:01 12 /usr/lib/libonnxruntime.so.1.32.0\n"
        "Rss:                   4 kB\n"
        "7f0000001000-7f0000002000 r--p 00000000 08:01 13 /srv/m/model.onnx.data\n"
        "7f0000002000-7f0000003000 r-xp 00000000 08:01 14 /v/np/_umath.cpython-311-x86_64.so\n"
        "7f0000003000-7f0000004000 rw-p 00000000 00:00 0 [heap]\n"
        "7f0000004000-7f0000005000 r--p 00000000 08:01 15 /srv/m/notes.so.txt\n"
    )
    assert shared_objects(smaps) == [
        "/usr/lib/libonnxruntime.so.1.32.0",
        "/v/np/_umath.cpython-311-x86_64.so",
    ]
