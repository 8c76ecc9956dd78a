"""What tools/select_data.py writes besides selection.json: the printed tables, the accuracy-against-tokens
plot (drawn with pillow, in the style of minilvlm.train.logging's plot) and the chosen mixture as a
`data.mixture` snippet."""
import json

from PIL import Image, ImageDraw


def mixture_snippet(chosen, paths, candidates):
    """The chosen sets as a `data.mixture` TOML snippet (paths: {name: file})."""
    lines = [f"# tools/select_data.py: the chosen mixture ({len(chosen)} of {candidates} sets)",
             "[data]", "mixture = ["]
    lines += [f'  {{path = {json.dumps(str(paths[n]))}, weight = 1.0}},' for n in chosen]
    return "\n".join(lines + ["]", ""])


def format_table(result):
    """The printed tables: rounds, leave-one-out, final comparison."""
    out = [f"{'round':>5}  {'candidate':<16} {'tokens':>9} {'steps':>6} {'accuracy':>9} {'gain':>7}  status"]
    for r in result["rounds"]:
        acc = f"{100 * r['accuracy']:.1f}%" if r["accuracy"] is not None else \
            "-" if r.get("overlap") is not None or r.get("relevance") is not None else "failed"
        gain = "" if r["gain"] is None else f"{100 * r['gain']:+.1f}"
        out.append(f"{r['round']:>5}  {r['candidate']:<16} {r['tokens']:>9,} {r['steps']:>6} {acc:>9} {gain:>7}  "
                   f"{r['status']}")
    loo = result["leave_one_out"]
    out.append(f"\nleave-one-out against all sets ({100 * loo['all_sets_accuracy']:.1f}%): accuracy lost without the set")
    for name, loss in loo["loss"].items():
        out.append(f"  {name:<16} {'failed' if loss is None else f'{100 * loss:+.1f} points'}")
    out.append(f"\nfinal comparison on {result['test']} ({result['seeds']} seed(s), mean ± half-range):")
    for arm, row in result["comparison"].items():
        acc = ("n/a (one set)" if row.get("soups") and len(row["sets"]) < 2 else "failed") if row["mean"] is None \
            else f"{100 * row['mean']:.1f} ± {100 * row['spread']:.1f}%"
        out.append(f"  {arm:<40} {acc:>14}  tokens {row['tokens']:>9,}  [{', '.join(row['sets'])}]")
    out.append(f"\nchosen: {', '.join(result['chosen'])}; {result['token_ratio']:.2f}x the tokens of all sets")
    if result.get("near_duplicates"):
        out.append(f"near-duplicates left out untried: {', '.join(result['near_duplicates'])} "
                   f"(more than {100 * result['max_overlap']:.0f}% of their records already chosen)")
    if result.get("off_target"):
        out.append(f"off-target sets left out untried: {', '.join(result['off_target'])} "
                   f"(less than {100 * result['min_relevance']:.0f}% relevant to the held-out file)")
    return "\n".join(out)


def plot_selection(rows, chosen, all_accuracy, all_tokens, path):
    """A PNG: every trial's held-out accuracy against its mixture's tokens (grey), the chosen path
    (blue line) and the all-sets model (red)."""
    points = [(r["tokens"], r["accuracy"], r["status"] == "chosen") for r in rows if r["accuracy"] is not None]
    if all_accuracy is not None:
        points.append((all_tokens, all_accuracy, False))
    width, height, margin = 720, 420, 50
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    max_tokens = max([t for t, _, _ in points] + [1])
    xy = lambda t, a: (margin + (width - 2 * margin) * t / max_tokens, height - margin - (height - 2 * margin) * a)  # noqa: E731
    draw.line([(margin, height - margin), (width - margin, height - margin)], fill="black")
    draw.line([(margin, margin), (margin, height - margin)], fill="black")
    for frac in (0, 0.25, 0.5, 0.75, 1.0):
        y = xy(0, frac)[1]
        draw.text((8, y - 6), f"{int(100 * frac)}%", fill="black")
    draw.text((width // 2 - 80, height - margin + 18), f"mixture tokens (max {max_tokens:,})", fill="black")
    draw.text((margin, 12), "held-out accuracy per trial; blue: chosen path, red: all sets", fill="black")
    for t, a, _ in points:
        x, y = xy(t, a)
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], outline="grey")
    path_points = [xy(0, 0)] + [xy(t, a) for t, a, c in points if c]
    draw.line(path_points, fill="blue", width=2)
    if all_accuracy is not None:
        x, y = xy(all_tokens, all_accuracy)
        draw.ellipse([x - 5, y - 5, x + 5, y + 5], fill="red")
    image.save(path)
