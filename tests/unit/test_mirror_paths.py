"""Object keys as mirror paths: every key gets a path of real file names, and
no two keys share one (hypothesis over keys with the parts S3 allows)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tunescope.ingest.store.mirror_paths import NAME_MAX, key_of_name, mirror_paths, part_name

PART = st.one_of(
    st.sampled_from(["", ".", "..", "%", "%25", "%2E", "%~file", "events", "rank-0.jsonl", "\x00"]),
    st.text(min_size=0, max_size=12),
    st.text(alphabet="ab.%~é", min_size=190, max_size=320),  # around the length limit
)
KEY = st.lists(PART, min_size=1, max_size=5).map("/".join)


@settings(max_examples=300)
@given(st.lists(KEY, max_size=12, unique=True))
def test_every_key_gets_its_own_path_of_file_names(keys):
    paths = mirror_paths(keys)
    assert len(set(paths.values())) == len(keys)
    for path in paths.values():
        for name in path.split("/"):
            assert name not in ("", ".", "..") and "\x00" not in name
            assert len(name.encode("utf-8", "surrogateescape")) <= NAME_MAX + len("%~file")
    # no copy sits where another key needs a folder
    names = set(paths.values())
    for path in names:
        parts = path.split("/")
        assert not any("/".join(parts[:i]) in names for i in range(1, len(parts)))


@given(st.text(max_size=60))
def test_a_short_name_reads_back_as_its_key(part):
    assert key_of_name(part_name(part)) == part


def test_plain_keys_keep_their_names():
    keys = ["run-a/events/rank-0.jsonl", "out/runs/tb/events.out.tfevents.1.host"]
    assert mirror_paths(keys) == {k: k for k in keys}
    assert mirror_paths(["a/events", "a/events/rank-0.jsonl"])["a/events"] == "a/events%~file"
    long = "x" * 300 + ".jsonl"
    assert part_name(long).startswith("x" * 100 + "%~") and part_name(long).endswith(".jsonl")
