"""The official MMAD query scripts as named prompt variants: their exact text and whitespace, option
order, letter extraction and decoding (jam-cc/MMAD at commit ``COMMIT``, ``evaluation/examples/``).

Each script builds one prompt per question; the text below is what its model's chat template
receives as the user turn, with ``<image>`` where an image goes (our model expands it to its
visual tokens, as each script's model does with its own image markup). The chat wrapping itself
is the model's own template, as in the scripts.

| variant | script | options | letter | no letter | decoding |
|---|---|---|---|---|---|
| ``gpt4v`` | ``GPT4/gpt4v.py`` (``GPT4Query``) | file order | last | none (the script raises) | API defaults: sampled, T 1, 600 tokens |
| ``qwen`` | ``Transformers/qwen_query.py`` | file order | last | closest option | Qwen-VL-Chat's config: sampled, top-p 0.3, 512 tokens |
| ``internvl`` | ``Transformers/internvl_query.py`` | file order | last | none (the script raises) | greedy, 128 tokens |
| ``llava`` | ``LLaVA_Query/llava_query.py`` | shuffled | first | closest option | sampled, T 0.2, 64 tokens |

``llava`` is the default: MAU-GPT is a LLaVA-style model. Deviations, all for reproducibility or
because the script's behaviour is not a score: the scripts' unseeded ``random.shuffle`` is seeded
here per question; an answer the ``gpt4v``/``internvl`` scripts could not parse (they raise
``IndexError``) is unparsable; images go through our model's transform (the GPT and LLaVA scripts
first re-encode them as JPEG at most 512 px).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from maugpt.mmad.scoring import MMADQuestion
from maugpt.tokenizer import IMAGE_TOKEN

COMMIT = "f9a0e6fd5f7d2477cbb5169620549ed899ef6307"
# gpt4v.py's module-level ``instruction`` (a triple-quoted string: newlines at both ends), which
# every open-source script imports.
INSTRUCTION = (
    "\nYou are an industrial inspector who checks products by images. You should judge whether there is "
    "a defect in the query image and answer the questions about it.\nAnswer with the option's letter "
    "from the given choices directly.\n"
)
DIRECTLY = "Answer with the option's letter from the given choices directly."


def options_text(question: MMADQuestion) -> str:
    return "".join(f"{letter}. {text}\n" for letter, text in question.options.items())


def numbered(question: MMADQuestion) -> str:
    """``GPT4Query.parse_conversation``'s text of a question (the space before the newline is the script's)."""
    return f"Question {question.index + 1}: {question.question} \n{options_text(question)}"


def _gpt4v(asked: list[MMADQuestion], shots: int, instruction: str) -> str:
    # GPT4Query.get_query: the user turn's content parts, sent back to back; generate_answer sends
    # the image's questions 1..i for question i and keeps the last letter of the reply.
    intro = f"Following is {shots} image of normal sample, which can be used as a template to compare." if shots else ""
    return (
        intro
        + IMAGE_TOKEN * shots
        + "Following is the query image: "
        + IMAGE_TOKEN
        + "Following is the question list: "
        + "".join(numbered(q) for q in asked)
    )


def _qwen(asked: list[MMADQuestion], shots: int, instruction: str) -> str:
    # QwenQuery.get_query through Qwen-VL's tokenizer.from_list_format, which joins text parts as
    # they are and writes each image as "Picture k: <img>…</img>\n".
    picture = lambda k: f"Picture {k}: {IMAGE_TOKEN}\n"  # noqa: E731
    intro = (
        (
            f"Following is/are {shots} image of normal sample, which can be used as a template to compare the "
            "image being queried."
        )
        if shots
        else ""
    )
    return (
        instruction
        + DIRECTLY
        + intro
        + "".join(picture(k + 1) for k in range(shots))
        + "Following is the query image: "
        + picture(shots + 1)
        + "Following is the question list: "
        + numbered(asked[-1])
    )


def _internvl(asked: list[MMADQuestion], shots: int, instruction: str) -> str:
    # InternVLQuery.get_query: payload + conversation_text.
    incontext = ""
    if shots:
        incontext = (
            f"Following is/are {shots} image of normal sample, which can be used as a template to compare the "
            "image being queried." + ("\n" + f" {IMAGE_TOKEN}\n") * shots
        )
    payload = (
        instruction
        + incontext
        + "\n"
        + "Following is the query image: "
        + "\n"
        + f"{IMAGE_TOKEN} "
        + "\n"
        + "Following is the question list. Answer with the option's letter from the given choices directly: "
        + "\n"
    )
    return payload + numbered(asked[-1]) + "\n"


def _llava(asked: list[MMADQuestion], shots: int, instruction: str) -> str:
    # LLaVAQuery.get_query (no history, CoT, domain knowledge or single-pred prompt: the defaults);
    # its parse_conversation writes the question without a number.
    question = f"Following is {shots} image of normal sample:" + f"{IMAGE_TOKEN}\n" * shots if shots else ""
    question = instruction + "\n" + question + "Test image: \n" + IMAGE_TOKEN + "\n"
    current = asked[-1]
    return question + "Following is new question list: \n" + f"{current.question} \n{options_text(current)}"


@dataclass(frozen=True)
class QueryScript:
    """One official query script's protocol.

    ``render(asked, shots, instruction)`` is the user turn for the last question of ``asked`` (the
    image's questions up to it, as shown); ``history`` says whether the earlier ones appear in it.
    """

    name: str
    script: str  # path under evaluation/examples/ at COMMIT
    render: Callable[[list[MMADQuestion], int, str], str]
    shuffle_options: bool
    last_letter: bool
    closest_option: bool  # an answer without a letter maps to the closest option text (difflib)
    decoding: dict = field(default_factory=dict)  # generate() keyword arguments
    system_instruction: bool = False  # the instruction is the system message, not part of the user turn
    history: bool = False

    def describe(self) -> str:
        sampled = self.decoding.get("do_sample")
        knobs = ", ".join(
            f"{k} {v}" for k, v in self.decoding.items() if k not in ("do_sample", "max_new_tokens") and v is not None
        )
        decoding = (f"sampled ({knobs})" if sampled else "greedy") + f", {self.decoding['max_new_tokens']} new tokens"
        return (
            f"query script {self.name} ({self.script} @ {COMMIT[:8]}): "
            f"{'first' if not self.last_letter else 'last'} letter A–E, "
            f"{'else the closest option text' if self.closest_option else 'no fallback'}; "
            f"official decoding: {decoding}"
        )


SCRIPTS: dict[str, QueryScript] = {
    s.name: s
    for s in (
        # The OpenAI API's defaults (temperature 1, top-p 1): the script sets only max_tokens.
        QueryScript(
            "gpt4v",
            "GPT4/gpt4v.py",
            _gpt4v,
            shuffle_options=False,
            last_letter=True,
            closest_option=False,
            decoding={"do_sample": True, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 600},
            system_instruction=True,
            history=True,
        ),
        # model.generation_config = Qwen-VL-Chat's generation_config.json (top_k 0: off).
        QueryScript(
            "qwen",
            "Transformers/qwen_query.py",
            _qwen,
            shuffle_options=False,
            last_letter=True,
            closest_option=True,
            decoding={"do_sample": True, "top_k": 0, "top_p": 0.3, "max_new_tokens": 512},
        ),
        QueryScript(
            "internvl",
            "Transformers/internvl_query.py",
            _internvl,
            shuffle_options=False,
            last_letter=True,
            closest_option=False,
            decoding={"do_sample": False, "max_new_tokens": 128},
        ),
        # The script's argparse defaults: temperature 0.2 (so do_sample), top_p None, num_beams 1.
        QueryScript(
            "llava",
            "LLaVA_Query/llava_query.py",
            _llava,
            shuffle_options=True,
            last_letter=False,
            closest_option=True,
            decoding={"do_sample": True, "temperature": 0.2, "top_p": None, "num_beams": 1, "max_new_tokens": 64},
        ),
    )
}
DEFAULT = "llava"


def query_script(name: str) -> QueryScript:
    if name not in SCRIPTS:
        raise ValueError(f"unknown MMAD query script {name!r}; expected one of {sorted(SCRIPTS)}")
    return SCRIPTS[name]
