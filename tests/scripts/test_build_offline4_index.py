"""The rules the offline4 index builder applies: class keys, concepts, and the split by group."""

from __future__ import annotations

from build_offline4_index import SPLIT_FRACTIONS, emoji_class_key, icon_concept, split_by_group


def test_emoji_variants_merge_into_one_class() -> None:
    # Skin tones, gender signs and man/woman/person all map to one class key.
    assert emoji_class_key("1f3c3") == "1f3c3"
    assert emoji_class_key("1f3c3-1f3fd-200d-2640-fe0f") == "1f3c3"
    assert emoji_class_key("1f468-1f3fb-200d-1f4bb") == "1f9d1-200d-1f4bb"
    assert emoji_class_key("1f469-200d-1f4bb") == emoji_class_key("1f9d1-200d-1f4bb")
    assert emoji_class_key("1f468") == "1f9d1"
    assert emoji_class_key("1f1eb-1f1f7") == "1f1eb-1f1f7"


def test_icon_concepts_strip_styles() -> None:
    # Style prefixes and suffixes are stripped, so one concept collects every set's style of it.
    assert icon_concept("ph", "bell-duotone") == "bell"
    assert icon_concept("ri", "bell-line") == "bell"
    assert icon_concept("material-symbols", "bell-outline-rounded") == "bell"
    assert icon_concept("ic", "twotone-bell") == "bell"
    assert icon_concept("ic", "bell") is None
    assert icon_concept("fluent", "alert-24-filled") == "alert"
    assert icon_concept("lucide", "bell-off") == "bell-off"


def test_split_by_group_keeps_groups_whole() -> None:
    # Every group lands in exactly one split, all classes are kept once, and the sizes approach 64/16/20.
    classes = [(f"{g}-{i}", i, g) for g in "abcdefghijklmnopqrst" for i in range(10)]
    splits = split_by_group(classes, "test")
    assert sorted(k for s in splits.values() for k, _ in s) == sorted(k for k, _, _ in classes)
    groups = {s: {k.split("-")[0] for k, _ in c} for s, c in splits.items()}
    assert not groups["train"] & groups["val"] and not groups["train"] & groups["test"]
    assert not groups["val"] & groups["test"]
    for s, share in SPLIT_FRACTIONS.items():
        assert abs(len(splits[s]) / len(classes) - share) <= 0.05
    assert splits == split_by_group(list(reversed(classes)), "test")
