"""Tables in a narrow terminal (COLUMNS=60) through the console script: a number is never cut."""

from __future__ import annotations

import re


def _tokens(text: str) -> set[str]:
    return set(re.findall(r"[-+]?\d[\d.e+-]*", text))


def test_metrics_compare_keeps_numbers_whole_at_60_columns(cli, tmp_path):
    a = [0.1, 0.2, 0.3, 0.4]
    b = [0.05, 0.1, 0.0, 0.2]
    lines = ["case,model,group,class,rater,metric,value"]
    for i, (va, vb) in enumerate(zip(a, b, strict=True)):
        lines.append(f"c{i},A,,kidney_and_masses,consensus,dice_consensus,{va}")
        lines.append(f"c{i},B,,kidney_and_masses,consensus,dice_consensus,{vb}")
    table = tmp_path / "m.csv"
    table.write_text("\n".join(lines) + "\n")
    res = cli(
        "metrics", "compare", str(table), "--a", "A", "--b", "B", "--n-boot", "200",
        env={"COLUMNS": "60"},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "…" not in out and "..." not in out
    assert max(len(line) for line in out.splitlines()) <= 60
    # means by hand: A 0.25, B 0.0875, B − A −0.1625 (printed with 4 significant digits)
    assert {"0.25", "0.0875", "-0.1625"} <= _tokens(out), out
    assert "kidney_and_masses" in out


def test_wide_terminal_keeps_the_table(cli, tmp_path):
    lines = ["case,model,group,class,rater,metric,value"]
    for i, (va, vb) in enumerate(((0.1, 0.05), (0.2, 0.1), (0.3, 0.0), (0.4, 0.2))):
        lines += [f"c{i},A,,fg,consensus,dice,{va}", f"c{i},B,,fg,consensus,dice,{vb}"]
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    res = cli(
        "metrics", "compare", str(tmp_path / "m.csv"), "--a", "A", "--b", "B",
        "--metric", "dice", "--n-boot", "200", env={"COLUMNS": "200"},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    header = next(line for line in res.stdout.splitlines() if "mean_diff" in line)
    assert "mean_a" in header and "p_value" in header  # one row of headers: a real table
