"""A held-out paraphrase set: prompts in words the training captions do not have.

`eval.PARAPHRASES` was written against the old captions; as captions widen (CLDR, emojilib, Iconify
names, colour phrases; see DATA.md) some of its words became captions, so it no longer measures
"words no caption has". These ~100 (prompt, accepted concept ids) pairs were written for the
widened captions: synonyms, hypernyms and descriptions ("a crimson apple", "a pachyderm", "a frank
in a bun"). Ids, not names, so a renamed concept keeps its pairs.

`check` re-verifies each pair against a dataset .json, because captions change with every build:
a pair is held out when the prompt is no caption of any concept and at least one of its content
words (lowercased, stop words dropped) is in no caption of any accepted concept. Pairs that fail
are reported and left out of the score, never silently counted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# (prompt, concept ids accepted as a hit): the first id is the intended concept, the others are
# ones a person would also accept (a dog or a dog face for "a pup").
HELDOUT_PARAPHRASES: list[tuple[str, tuple[str, ...]]] = [
    ("a crimson apple", ("1f34e",)),  # red apple
    ("a feline smiling", ("1f63a", "1f63b", "1f638", "1f63c")),
    ("a pup", ("1f436", "1f415")),  # dog face, dog
    ("a blaze", ("1f525",)),  # fire
    ("a motorcar", ("1f697",)),  # automobile
    ("a scarlet valentine", ("2764",)),  # red heart
    ("an emerald frog", ("1f438",)),  # frog
    ("a chilly snowman", ("2603", "26c4")),  # snowman, snowman without snow
    ("a spectre", ("1f47b",)),  # ghost
    ("an android", ("1f916",)),  # robot
    ("a parasol", ("2602", "2614", "1f302")),  # umbrella, umbrella with rain drops, closed umbrella
    ("a six-string", ("1f3b8",)),  # guitar
    ("a golden plantain", ("1f34c",)),  # banana
    ("a ruby berry", ("1f353",)),  # strawberry
    ("a juicy summer melon slice", ("1f349",)),  # watermelon
    ("a cephalopod", ("1f419", "1f991")),  # octopus, squid
    ("a tiara", ("1f451",)),  # crown
    ("a parcel with a ribbon", ("1f381",)),  # wrapped gift
    ("an inflatable toy", ("1f388",)),  # balloon
    ("a gelato cone", ("1f366", "1f368")),  # soft ice cream, ice cream
    ("a steaming cuppa", ("2615",)),  # hot beverage
    ("a prism arc", ("1f308",)),  # rainbow
    ("approval gesture", ("1f44d",)),  # thumbs up
    ("a flightless seabird", ("1f427",)),  # penguin
    ("a sandwich with a patty", ("1f354",)),  # hamburger
    ("an incandescent lamp", ("1f4a1",)),  # light bulb
    ("a cranium", ("1f480",)),  # skull
    ("a stallion", ("1f40e", "1f434")),  # horse, horse face
    ("a heifer", ("1f42e", "1f404")),  # cow face, cow
    ("a piglet", ("1f437", "1f416")),  # pig face, pig
    ("a bruin", ("1f43b",)),  # bear
    ("a giant panda", ("1f43c",)),  # panda
    ("a big striped cat", ("1f42f", "1f405")),  # tiger face, tiger
    ("a maned big cat", ("1f981",)),  # lion
    ("a pachyderm", ("1f418",)),  # elephant
    ("a humpback", ("1f40b", "1f433")),  # whale, spouting whale
    ("a porpoise", ("1f42c",)),  # dolphin
    ("a predator of the deep", ("1f988",)),  # shark
    ("a monarch with wings", ("1f98b",)),  # butterfly
    ("a gastropod", ("1f40c",)),  # snail
    ("a bumble", ("1f41d",)),  # honeybee
    ("an eight-legged critter", ("1f577",)),  # spider
    ("a serpentine reptile", ("1f40d",)),  # snake
    ("a nocturnal raptor", ("1f989",)),  # owl
    ("a bird of prey", ("1f985",)),  # eagle
    ("a drake", ("1f986",)),  # duck
    ("a bloom of crimson petals", ("1f339",)),  # rose
    ("a succulent", ("1f335",)),  # cactus
    ("a conifer", ("1f332",)),  # evergreen tree
    ("a fungi", ("1f344",)),  # mushroom
    ("an orange root vegetable", ("1f955",)),  # carrot
    ("a bunch of vines fruit", ("1f347",)),  # grapes
    ("a citron", ("1f34b",)),  # lemon
    ("a pair of drupes", ("1f352",)),  # cherries
    ("an ananas", ("1f34d",)),  # pineapple
    ("a slab of cheddar", ("1f9c0",)),  # cheese wedge
    ("a biscuit with chips", ("1f36a",)),  # cookie
    ("a layered gateau", ("1f382", "1f370")),  # birthday cake, shortcake
    ("a two-wheeler", ("1f6b2",)),  # bicycle
    ("a jetliner", ("2708",)),  # airplane
    ("an ocean liner", ("1f6a2", "1f6f3")),  # ship, passenger ship
    ("a schooner", ("26f5",)),  # sailboat
    ("an omnibus", ("1f68c", "1f68d")),  # bus, oncoming bus
    ("a squad car", ("1f693", "1f694")),  # police car, oncoming police car
    ("a paramedic van", ("1f691",)),  # ambulance
    ("a chopper", ("1f681",)),  # helicopter
    ("a campsite shelter", ("26fa",)),  # tent
    ("a shackle", ("1f512",)),  # locked
    ("a chime of the church", ("1f514",)),  # bell
    ("a mallet", ("1f528",)),  # hammer
    ("a tome", ("1f4da", "1f4d5", "1f4d6")),  # books, closed book, open book
    ("a cellphone", ("1f4f1",)),  # mobile phone
    ("a notebook computer", ("1f4bb",)),  # laptop
    ("a wake-up clock", ("23f0",)),  # alarm clock
    ("a hoops ball", ("1f3c0",)),  # basketball
    ("a lunar sickle", ("1f319",)),  # crescent moon
    ("a cumulus", ("2601",)),  # cloud
    ("an ice crystal", ("2744",)),  # snowflake
    ("a lightning strike", ("26a1", "1f329")),  # high voltage, cloud with lightning
    ("a raindrop", ("1f4a7",)),  # droplet
    ("spectacles", ("1f453",)),  # glasses
    ("denims", ("1f456",)),  # jeans
    ("a sapphire", ("1f48e",)),  # gem stone
    ("an explosive", ("1f4a3",)),  # bomb
    ("a hypodermic", ("1f489",)),  # syringe
    ("the planet from space", ("1f30d", "1f30e", "1f30f")),
    ("an erupting peak", ("1f30b",)),  # volcano
    ("a summit", ("26f0", "1f3d4")),  # mountain, snow-capped mountain
    ("a tv set", ("1f4fa",)),  # television
    ("a taper", ("1f56f",)),  # candle
    ("a jalapeno", ("1f336",)),  # hot pepper
    ("a guacamole fruit", ("1f951",)),  # avocado
    ("a spud", ("1f954",)),  # potato
    ("a crescent pastry", ("1f950",)),  # croissant
    ("chips from a fast food joint", ("1f35f",)),  # french fries
    ("a frank in a bun", ("1f32d",)),  # hot dog
    ("maki roll", ("1f363",)),  # sushi
    ("a plate of noodles with sauce", ("1f35d",)),  # spaghetti
    ("a glazed ring pastry", ("1f369",)),  # doughnut
    ("a candy on a stick", ("1f36d",)),  # lollipop
    ("a pint of lager", ("1f37a",)),  # beer mug
    ("a glass of merlot", ("1f377",)),  # wine glass
    ("a carved pumpkin", ("1f383",)),  # jack-o-lantern
    ("a pyrotechnic display", ("1f386",)),  # fireworks
    ("a martian", ("1f47d",)),  # alien
    ("a jester face", ("1f921",)),  # clown face
    ("a mythical horned horse", ("1f984",)),  # unicorn
    ("a tyrannosaur", ("1f996",)),  # T-Rex
    ("a crustacean with pincers", ("1f980", "1f99e")),  # crab, lobster
    ("a porcupine-like critter", ("1f994",)),  # hedgehog
    ("a wallaby", ("1f998",)),  # kangaroo
    ("a striped equine", ("1f993",)),  # zebra
    ("a vicuna", ("1f999",)),  # llama
    ("a macaw", ("1f99c",)),  # parrot
    ("a pink wader", ("1f9a9",)),  # flamingo
    ("a cockerel crowing", ("1f413",)),  # rooster
    ("a vixen", ("1f98a",)),  # fox
    ("a trash panda", ("1f99d",)),  # raccoon
]

STOP_WORDS = frozenset({"a", "an", "the", "of", "on", "in", "with", "and", "or", "for", "to", "from",
                        "by", "at", "as", "it", "its", "is", "are", "this", "that", "some"})


def content_words(text: str) -> list[str]:
    """Lowercased words of `text` without stop words."""
    return [w for w in re.findall(r"[a-z0-9'-]+", text.lower()) if w not in STOP_WORDS]


def novel_words(prompt: str, captions: Iterable[str]) -> list[str]:
    """The prompt's content words that are in none of `captions` (as whole words)."""
    seen = {w for c in captions for w in re.findall(r"[a-z0-9'-]+", c.lower())}
    return [w for w in content_words(prompt) if w not in seen]


def check(meta: dict, pairs: list[tuple[str, tuple[str, ...]]] | None = None
          ) -> tuple[list[tuple[str, list[int]]], list[dict]]:
    """Verify `pairs` (default HELDOUT_PARAPHRASES) against a dataset's meta (its .json).

    Returns (valid pairs as (prompt, concept indices into meta["concepts"]), rejected pairs with
    the reason). Ids missing from the dataset (a `limit` build, an older emoji set) are dropped
    from a pair; a pair with none left is rejected."""
    index = {c["id"]: i for i, c in enumerate(meta["concepts"])}
    all_captions = {c.lower() for con in meta["concepts"] for c in con.get("captions") or []}
    valid: list[tuple[str, list[int]]] = []
    rejected: list[dict] = []
    for prompt, ids in HELDOUT_PARAPHRASES if pairs is None else pairs:
        found = [index[i] for i in ids if i in index]
        if not found:
            rejected.append({"prompt": prompt, "reason": "no accepted concept in the dataset"})
            continue
        if " ".join(prompt.lower().split()) in all_captions:
            rejected.append({"prompt": prompt, "reason": "the prompt is a caption"})
            continue
        caps = [c for i in found for c in meta["concepts"][i].get("captions") or []]
        if not novel_words(prompt, caps):
            rejected.append({"prompt": prompt, "reason": "every word is in a caption of the target"})
            continue
        valid.append((prompt, found))
    return valid, rejected
