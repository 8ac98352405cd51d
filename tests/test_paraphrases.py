"""The held-out paraphrase set and its check against a dataset's captions (synthetic meta)."""

from __future__ import annotations

import re

from canvasd.training import paraphrases as P


def _meta() -> dict:
    return {"concepts": [
        {"id": "1f34e", "name": "red apple", "captions": ["red apple", "apple", "fruit", "ripe"]},
        {"id": "1f436", "name": "dog face", "captions": ["dog face", "dog", "puppy", "pet"]},
        {"id": "1f415", "name": "dog", "captions": ["dog", "pet", "doggo"]},
        {"id": "1f525", "name": "fire", "captions": ["fire", "flame", "blaze"]},
    ]}


def test_check_keeps_novel_prompts_and_says_why_it_drops_others():
    pairs = [
        ("a crimson apple", ("1f34e",)),  # 'crimson' is in no caption of the apple
        ("a pup", ("1f436", "1f415")),  # 'pup' (whole word) is not 'puppy'
        ("a blaze", ("1f525",)),  # 'blaze' is a caption of fire here
        ("ripe apple", ("1f34e",)),  # every word is in its captions
        ("Puppy", ("1f34e",)),  # a caption (of another concept): not held out
        ("a pachyderm", ("1f418",)),  # not in this dataset
    ]
    valid, rejected = P.check(_meta(), pairs)
    assert valid == [("a crimson apple", [0]), ("a pup", [1, 2])]
    assert [r["prompt"] for r in rejected] == ["a blaze", "ripe apple", "Puppy", "a pachyderm"]
    assert rejected[1]["reason"] == "every word is in a caption of the target"
    assert rejected[2]["reason"] == "the prompt is a caption"
    assert rejected[3]["reason"] == "no accepted concept in the dataset"


def test_content_and_novel_words():
    assert P.content_words("A Crimson apple of the tree") == ["crimson", "apple", "tree"]
    assert P.novel_words("a crimson apple", ["red apple", "apple"]) == ["crimson"]


def test_the_set_is_well_formed():
    pairs = P.HELDOUT_PARAPHRASES
    assert len(pairs) >= 100
    prompts = [p for p, _ in pairs]
    assert len(set(prompts)) == len(prompts)
    for prompt, ids in pairs:
        assert ids and all(re.fullmatch(r"[0-9a-f]{4,5}(-[0-9a-f]{4,5})*", i) for i in ids), prompt
        assert P.content_words(prompt), prompt
