"""Printing an evaluation: accuracy per question type, per task, and a few sample answers."""
from minilvlm.eval.score import expected_answer



def print_eval(result, title, samples, stream):
    print(f"{title}:", file=stream)
    for key in sorted(result["accuracy"]):
        if not key.startswith("task/"):
            print(f"  {key:<18} {100 * result['accuracy'][key]:5.1f}%  ({result['count'][key]} questions)", file=stream)
    tasks = " ".join(f"{k[5:]} {100 * v:.0f}%" for k, v in sorted(result["accuracy"].items()) if k.startswith("task/"))
    print(f"  per task: {tasks}", file=stream)
    for record, text, correct in result["answers"][:samples]:
        question = record.turns[-2].text.replace("<image>\n", "[image] ").replace("\n", " / ")
        print(f"  Q: {question}\n     -> {text.strip()!r} (expected {expected_answer(record)!r}, "
              f"{'right' if correct else 'wrong'})", file=stream)
