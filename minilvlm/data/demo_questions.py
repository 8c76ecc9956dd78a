"""What the demo asks about a picture, and how it draws one to fit the answer: the question sets, the
balanced choice of answers, the scene builder and the text-only tasks (minilvlm/data/demo.py writes the
demo set with them, minilvlm/data/demo_efficiency.py the data-efficiency demo)."""
from minilvlm.data.demo_shapes import COLOURS, SHAPES, Shape, place
from minilvlm.data.scienceqa import LETTERS, mc_answer, mc_prompt

COLOUR_NAMES = tuple(COLOURS)
COUNTS = ("1", "2", "3", "4")
QUESTIONS = {   # task: (question, answer options)
    "colour": ("What colour is the shape?", COLOUR_NAMES),
    "shape": ("What shape is in the picture?", SHAPES),
    "count": ("How many shapes are in the picture?", COUNTS),
    "position": ("What colour is the shape on the left?", COLOUR_NAMES),
    "comparison": ("What colour is the larger shape?", COLOUR_NAMES),
    "same_colour": ("Are the two shapes the same colour?", ("yes", "no")),
}
MC_TASKS = ("colour", "shape", "count", "position", "comparison")
# The mma demo's question types, new to a model trained on QUESTIONS but worded only with words
# QUESTIONS already use (a frozen LM cannot learn new words): tasks="mma".
MMA_QUESTIONS = {
    "shape_left": ("What shape is on the left?", SHAPES),
    "larger_shape": ("What is the larger shape?", SHAPES),
    "count_left": ("How many shapes are on the left?", ("1", "2", "3")),
}
# tasks="captions": every record asks CAPTION_PROMPT of a scene and is answered by picture_caption, the
# caption-style data of LLaVA's first stage (configs/compare/llava_stages.toml), in the demo's own words.
CAPTION_PROMPT = "What is in the picture?"
TASK_SETS = {"shapes": QUESTIONS, "mma": MMA_QUESTIONS, "captions": {"caption": (CAPTION_PROMPT, ())}}
ALL_QUESTIONS = {**QUESTIONS, **MMA_QUESTIONS}
# How often each image task is asked: shape and count take a small tower longest to learn (colour
# questions are answered near perfectly long before), so they get twice the share.
TASK_WEIGHTS = {"colour": 1, "shape": 2, "count": 2, "position": 1, "comparison": 1, "same_colour": 1}
WORDS = ("apple", "river", "stone", "cloud", "tiger", "lemon", "chair", "grape", "plant", "music",
         "ocean", "pencil", "garden", "rabbit", "window", "silver", "candle", "forest", "button",
         "kite", "moon", "star", "book", "lamp", "frog", "bread", "horse", "sugar", "paper", "train")


class BalancedChooser:
    """Per key, hands out options in shuffled rounds: after any number of draws, the counts of
    a key's options differ by at most one."""

    def __init__(self, rng):
        self.rng, self.rounds = rng, {}

    def draw(self, key, options):
        pending = self.rounds.setdefault(key, [])
        if not pending:
            pending.extend(self.rng.sample(list(options), len(options)))
        return pending.pop()


def _others(rng, options, exclude):
    return rng.choice([o for o in options if o != exclude])


def build_scene(task, answer, size, rng):
    """Shapes for which `answer` is the right answer to `task`'s question."""
    kind = lambda: rng.choice(SHAPES)          # noqa: E731
    colour = lambda: rng.choice(COLOUR_NAMES)  # noqa: E731
    radius = lambda lo, hi: rng.uniform(lo * size, hi * size)  # noqa: E731
    if task == "colour":
        specs, x_ranges = [(kind(), answer, radius(0.12, 0.3))], None
    elif task == "shape":
        specs, x_ranges = [(answer, colour(), radius(0.22, 0.38))], None   # big enough to see the outline
    elif task == "count":
        specs, x_ranges = [(kind(), colour(), radius(0.08, 0.13)) for _ in range(int(answer))], None
    elif task == "position":
        specs = [(kind(), answer, radius(0.1, 0.18)),
                 (kind(), _others(rng, COLOUR_NAMES, answer), radius(0.1, 0.18))]
        x_ranges = [(0.0, 0.42), (0.58, 1.0)]
    elif task == "comparison":
        specs = [(kind(), answer, radius(0.2, 0.26)),
                 (kind(), _others(rng, COLOUR_NAMES, answer), radius(0.08, 0.12))]
        x_ranges = None
    elif task == "same_colour":
        first = colour()
        second = first if answer == "yes" else _others(rng, COLOUR_NAMES, first)
        specs, x_ranges = [(kind(), first, radius(0.1, 0.18)), (kind(), second, radius(0.1, 0.18))], None
    elif task == "shape_left":
        specs = [(answer, colour(), radius(0.1, 0.18)), (_others(rng, SHAPES, answer), colour(), radius(0.1, 0.18))]
        x_ranges = [(0.0, 0.42), (0.58, 1.0)]
    elif task == "larger_shape":
        specs = [(answer, colour(), radius(0.2, 0.26)), (_others(rng, SHAPES, answer), colour(), radius(0.08, 0.12))]
        x_ranges = None
    elif task == "count_left":
        right = rng.randint(0, 2)
        specs = [(kind(), colour(), radius(0.07, 0.09)) for _ in range(int(answer) + right)]
        x_ranges = [(0.0, 0.42)] * int(answer) + [(0.58, 1.0)] * right
    else:
        raise ValueError(f"unknown task {task!r}")
    if x_ranges is None and len(specs) == 2 and rng.random() < 0.5:
        specs.reverse()   # the answer's shape is not always drawn first
    centres = place(rng, [r for _, _, r in specs], size, x_ranges)
    return [Shape(k, c, x, y, r) for (k, c, r), (x, y) in zip(specs, centres)]


def picture_caption(shapes):
    """The shapes left to right, "red circle . blue square", or "3 shapes" for three or more (only words
    of the demo's questions and answers, so a tokenizer built from them covers the captions)."""
    if len(shapes) > 2:
        return f"{len(shapes)} shapes"
    return " . ".join(f"{s.colour} {s.kind}" for s in sorted(shapes, key=lambda s: s.x))


def image_question(task, rng, chooser, multiple_choice):
    """(prompt, reply, answer, choices) with the answer drawn in balanced rounds per prompt."""
    question, options = ALL_QUESTIONS[task]
    if not multiple_choice:
        answer = chooser.draw(question, options)
        return f"<image>\n{question}", answer, answer, list(options)
    # A random subset of 2 or more options, always listed in the options' own order: the model
    # still has to find what it sees among them, with one fewer thing to learn than shuffled lists.
    picked = set(rng.sample(list(options), rng.randint(2, len(options))))
    choices = [o for o in options if o in picked]
    prompt = mc_prompt(question, choices, has_image=True)
    index = chooser.draw(prompt, range(len(choices)))
    return prompt, mc_answer(index), LETTERS[index], choices


def text_task(rng):
    """(task, subject, prompt, reply) of a text-only instruction."""
    kind = rng.choice(("add", "subtract", "multiply", "reverse", "upper", "length"))
    a, b = rng.randint(1, 50), rng.randint(1, 50)
    word = rng.choice(WORDS)
    if kind == "add":
        return kind, "arithmetic", f"What is {a} + {b}?", str(a + b)
    if kind == "subtract":
        a, b = max(a, b), min(a, b)
        return kind, "arithmetic", f"What is {a} - {b}?", str(a - b)
    if kind == "multiply":
        a, b = a % 9 + 2, b % 9 + 2
        return kind, "arithmetic", f"What is {a} times {b}?", str(a * b)
    if kind == "reverse":
        return kind, "language", f"Reverse the letters of the word '{word}'.", word[::-1]
    if kind == "upper":
        return kind, "language", f"Write the word '{word}' in capital letters.", word.upper()
    return kind, "language", f"How many letters are in the word '{word}'?", str(len(word))


def turns(prompt, reply):
    return [{"from": "human", "value": prompt}, {"from": "gpt", "value": reply}]
