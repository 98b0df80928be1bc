"""Generate ``reviews.jsonl``: a deterministic set of short product reviews for the text classifier.

No real review corpus can be downloaded here, so this fills sentence templates with words drawn
by a seeded generator: 200 distinct reviews for each of three labels, ``positive``, ``negative``
and ``neutral``, shuffled. Words alone do not give every label away: some reviews negate
("the battery is not great at all"), some turn around ("the price is awful but overall the lamp is
superb"), and some neutral ones name both sides ("neither great nor awful"), so a model has to
read word order to get them right - which the text classifier recipe's transformer can. Each line
is one JSON object ``{"text": ..., "label": ...}``. Standard library only, so it runs anywhere:

    python include/sample_data/make_reviews.py > include/sample_data/reviews.jsonl
"""

from __future__ import annotations

import json
import random
import sys

PRODUCTS = ["phone", "laptop", "blender", "kettle", "headset", "camera", "backpack", "lamp", "keyboard",
            "speaker", "watch", "vacuum", "toaster", "monitor", "charger", "jacket", "chair", "printer"]
ASPECTS = ["battery", "screen", "sound", "build quality", "price", "design", "delivery", "packaging",
           "customer service", "manual", "fit", "handle", "cable", "finish"]
GOOD = ["great", "excellent", "fantastic", "reliable", "comfortable", "sturdy", "wonderful", "impressive",
        "perfect", "superb", "lovely", "solid"]
BAD = ["terrible", "awful", "flimsy", "useless", "disappointing", "poor", "horrible", "broken", "cheap",
       "faulty", "noisy", "unreliable"]
VERY = ["really", "very", "truly", "absolutely", "quite", "incredibly", ""]
LIKE = ["love", "enjoy", "recommend", "adore", "really like"]
HATE = ["hate", "regret buying", "dislike", "returned", "cannot stand"]
WELL = ["perfectly", "flawlessly", "beautifully", "well", "smoothly"]
DAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
COLOURS = ["black", "white", "grey", "blue", "red", "green", "silver"]
PEOPLE = ["sister", "brother", "mother", "father", "friend", "neighbour", "office", "son", "daughter"]
EXTRAS = ["cable", "case", "manual", "spare filter", "carry bag", "wall plug", "warranty card"]
UNITS = ["days", "weeks", "months"]
ORDINALS = ["second", "third", "fourth", "fifth"]

TEMPLATES = {
    "positive": [
        "the {product} is {very} {good}.",
        "i {like} this {product}, the {aspect} is {good}.",
        "what a {good} {product}, i would buy it again.",
        "the {aspect} of the {product} is {very} {good} and the {aspect2} is {good2}.",
        "five stars, the {product} works {well}.",
        "the {aspect} is not {bad} at all, i {like} this {product}.",
        "the {aspect} is {bad} but overall the {product} is {good}.",
        "after {n} {unit} the {product} still works {well}.",
    ],
    "negative": [
        "the {product} is {very} {bad}.",
        "i {hate} this {product}, the {aspect} is {bad}.",
        "what a {bad} {product}, never again.",
        "the {aspect} of the {product} is {very} {bad} and the {aspect2} is {bad2}.",
        "one star, the {product} stopped working after {n} {unit}.",
        "the {aspect} is not {good} at all, i {hate} this {product}.",
        "the {aspect} is {good} but overall the {product} is {bad}.",
        "after {n} {unit} the {product} is already {bad}.",
    ],
    "neutral": [
        "the {product} arrived on {day}.",
        "i bought the {product} in {colour} for my {person}.",
        "the {product} comes with a {extra} and a {extra2}.",
        "i have used the {product} for {n} {unit} so far.",
        "it is the {ordinal} {product} i have ordered this year.",
        "the {aspect} of the {product} is neither {good} nor {bad}.",
        "my {person} asked whether the {product} is {good} or {bad}.",
        "the {product} is {colour} and the {aspect} is as described.",
    ],
}
PER_LABEL = 200
SEED = 42


def _fill(template: str, rng: random.Random) -> str:
    aspect, aspect2 = rng.sample(ASPECTS, 2)
    good, good2 = rng.sample(GOOD, 2)
    bad, bad2 = rng.sample(BAD, 2)
    extra, extra2 = rng.sample(EXTRAS, 2)
    text = template.format(
        product=rng.choice(PRODUCTS), aspect=aspect, aspect2=aspect2, good=good, good2=good2, bad=bad, bad2=bad2,
        very=rng.choice(VERY), like=rng.choice(LIKE), hate=rng.choice(HATE), well=rng.choice(WELL),
        day=rng.choice(DAYS), colour=rng.choice(COLOURS), person=rng.choice(PEOPLE), extra=extra, extra2=extra2,
        n=rng.randint(2, 11), unit=rng.choice(UNITS), ordinal=rng.choice(ORDINALS),
    )
    text = " ".join(text.split())  # an empty intensifier leaves two spaces
    return text[0].upper() + text[1:]


def rows(seed: int = SEED) -> list[dict[str, str]]:
    rng = random.Random(seed)
    out: list[dict[str, str]] = []
    for label, templates in TEMPLATES.items():
        seen: set[str] = set()
        while len(seen) < PER_LABEL:
            text = _fill(templates[len(seen) % len(templates)], rng)
            if text not in seen:
                seen.add(text)
                out.append({"text": text, "label": label})
    rng.shuffle(out)
    return out


def main() -> None:
    for row in rows():
        sys.stdout.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
