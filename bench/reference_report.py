"""The markdown page of one ``bench/reference_lcm.py`` run (``results.md``): speed, memory, LoRA and
quality of fewstep's LCM-LoRA against diffusers' script, from its ``results.json``."""
from __future__ import annotations


def _ci(v, ci, digits=3) -> str:
    return f"{v:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def _diff(d, digits=3) -> str:
    star = "*" if d["lo"] > 0 or d["hi"] < 0 else ""
    return f"{d['diff']:+.{digits}f} [{d['lo']:+.{digits}f}, {d['hi']:+.{digits}f}]{star}"


def markdown(r: dict, steps: tuple[int, ...]) -> str:
    sp, mem, lora = r["speed"], r["memory"], r["lora"]
    gib = 2**30
    lines = [f"# fewstep vs diffusers' LCM-LoRA script ({r['steps']} steps, seed {r['seed']})", "",
             f"Command: `{r['command']}`", "", f"fewstep: {r['fewstep_state']}. Machine: {r['machine']}.",
             f"Reference autocast: {r['reference_autocast']}. Warm-up excluded: {r['warmup_steps']} steps; "
             f"common window {sp.get('common_window_s', float('nan')):.0f} s.", "",
             "| | reference (diffusers script) | fewstep | fewstep / reference |", "| --- | --- | --- | --- |"]

    def cell(label, key, fmt="{:.3f}"):
        v = sp[label].get(key)
        return fmt.format(v) if v is not None else "-"

    for key, what in (("common_window_steps_per_s", "steps/s, both running (common window)"),
                      ("own_window_steps_per_s", "steps/s, own post-warm-up window")):
        a, b = sp["reference"].get(key), sp["fewstep"].get(key)
        ci = (sp.get("ratio_blocks") or {}).get("ci95") if key.startswith("common") else None
        interval = f" [{ci[0]:.3f}, {ci[1]:.3f}] (10 slices)" if ci else ""
        lines.append(f"| {what} | {cell('reference', key)} | {cell('fewstep', key)} | "
                     f"{b / a:.3f}x{interval} |" if a and b else f"| {what} | - | - | - |")
    for key, what in (("largest_process_bytes", "peak RSS, largest process (VmHWM)"),
                      ("largest_process_anon_bytes", "peak anonymous memory, largest process (RssAnon, polled)"),
                      ("tree_bytes", "peak RSS, process tree (polled)")):
        if key not in mem["reference"]:
            continue
        a, b = mem["reference"][key] / gib, mem["fewstep"][key] / gib
        lines.append(f"| {what} | {a:.2f} GiB | {b:.2f} GiB | {b / a:.2f}x |")
    lines.append(f"| LoRA parameters (modules) | {lora['reference']['parameters']:,} ({lora['reference']['modules']}) | "
                 f"{lora['fewstep']['parameters']:,} ({lora['fewstep']['modules']}) | same modules: "
                 f"{lora['same_modules']} |")
    lines += ["", f"Conversion check (script's peft UNet vs diffusers-loaded converted LoRA): max |diff| "
              f"{lora['conversion_max_abs_diff']:.2e}.", ""]
    q = r.get("quality")
    if q:
        t = q["teacher"]
        lines += [f"Quality, {r.get('num_images', '')} paired prompts (fewstep eval; intervals 95 % bootstrap; `*` "
                  f"excludes 0); teacher = DDIM {t['steps']} steps:", "",
                  "| steps | all: reference | all: fewstep | all: fewstep - reference | FID-inf: reference | "
                  "FID-inf: fewstep | FID-inf: fewstep - reference |", "| --- " * 7 + "|"]
        for s in steps:
            e = q[s] if s in q else q[str(s)]
            a, b, d = e["reference"], e["fewstep"], e["fewstep_minus_reference"]
            lines.append(f"| {s} | {_ci(a['all'], a['all_ci'])} | {_ci(b['all'], b['all_ci'])} | "
                         f"{_diff(d['attribute_accuracy.all'])} | {_ci(a['fid_infinity'], a['fid_infinity_ci'], 1)} | "
                         f"{_ci(b['fid_infinity'], b['fid_infinity_ci'], 1)} | {_diff(d['fid_infinity'], 1)} |")
    return "\n".join(lines) + "\n"
