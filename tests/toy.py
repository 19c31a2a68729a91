"""A toy task the untrained base cannot guess: topics mapped to code words."""

from __future__ import annotations

import json
from pathlib import Path

from .conftest import write_jsonl

TOPICS = {
    "alpha": [
        "apples",
        "bananas",
        "a ripe mango",
        "fresh strawberries",
        "grapes",
        "a sour lemon",
        "pears",
        "cherries",
        "an orange",
        "blueberries",
        "a watermelon",
        "peaches",
        "kiwis",
        "plums",
    ],
    "bravo": [
        "a red car",
        "the bus",
        "a fast train",
        "my bicycle",
        "a truck",
        "the airplane",
        "a motorbike",
        "the subway",
        "a taxi",
        "a sailboat",
        "the tram",
        "a scooter",
        "a van",
        "the ferry",
    ],
    "charlie": [
        "heavy rain",
        "a thunderstorm",
        "snow",
        "strong wind",
        "fog",
        "a sunny sky",
        "hail",
        "a heatwave",
        "drizzle",
        "a tornado",
        "frost",
        "clouds",
        "a blizzard",
        "humidity",
    ],
    "delta": [
        "a piano",
        "the guitar",
        "drums",
        "a violin",
        "the trumpet",
        "a flute",
        "the cello",
        "a saxophone",
        "the harp",
        "a banjo",
        "the clarinet",
        "an organ",
        "a ukulele",
        "the tuba",
    ],
}
FRAMES = ["I keep thinking about {}.", "Tell me about {}", "{} is on my mind today"]
INSTRUCTION = "Answer with the code word for the topic of the text: alpha, bravo, charlie or delta."


def toy_examples() -> list[dict]:
    rows = []
    for label, things in TOPICS.items():
        for i, thing in enumerate(things):
            rows.append({"input": FRAMES[i % len(FRAMES)].format(thing), "output": label})
    return rows


def write_toy_task(folder: Path, steps: int = 60, extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(folder / "examples.jsonl", toy_examples())
    spec = folder / "kolm.yaml"
    spec.write_text(
        f"name: toy\ndescription: {json.dumps(INSTRUCTION)}\nexamples: examples.jsonl\n"
        f"heldout_fraction: 0.25\nseed: 0\n"
        f"train: {{steps: {steps}, batch_size: 8, learning_rate: 0.002, max_seq_len: 96}}\n{extra}"
    )
    return spec
