"""Scores of the engine configurations and the rules that choose among them.

:func:`~sklearn_beta.select_engine_config` replays held-out time blocks of a
trace under each candidate configuration; this module turns those replays
into errors, scores and the result's tables, and holds the choice's rules
(ties to the largest prefill cap, the edge of the candidates).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..engine._replay import replay_errors

#: Held-out quantities measured for every candidate: the prefill phase's
#: duration from the replay's first step serving the prompt, then
#: :data:`~sklearn_beta.replay.REPLAY_QUANTITIES`. The score combines
#: ``prefill`` and ``decode``.
QUANTITIES = ("prefill", "ttft", "decode", "e2e")


def prefill_errors(replayed: pd.DataFrame) -> np.ndarray:
    """Relative error of the prefill phase's duration, per request.

    Measured from the first step serving the prompt, in the replay and in
    the trace: what the chunking decides (how many steps a prompt takes, how
    long they last), without the wait before it (admission, the next step
    boundary), which queueing amplifies at heavy load whatever the chunking.
    """
    predicted = replayed["prefill_end"] - replayed["prefill_start"]
    observed = replayed["observed_prefill_end"] - replayed["observed_prefill_start"]
    return (predicted / observed - 1.0).to_numpy()


def errors(replayed: pd.DataFrame) -> dict:
    """Mean absolute relative error of each quantity over the given requests."""
    out = {"prefill": float(np.mean(np.abs(prefill_errors(replayed))))}
    return out | {
        q: float(np.mean(np.abs(replay_errors(replayed, q)))) for q in QUANTITIES[1:]
    }


def score(mean_errors: dict) -> float:
    """``sqrt(prefill * decode)``: relative improvements of either count alike."""
    return float(np.sqrt(mean_errors["prefill"] * mean_errors["decode"]))


def score_table(pairs, runs, first, classes) -> pd.DataFrame:
    """One row per candidate (``EngineConfig.scores``): the candidates scored
    on every fold first, each group by score; failures last."""
    representative = {p: members[0] for members in classes for p in members}
    rows = []
    for pair in pairs:
        folds = runs.get(pair, [])
        per_fold = [errors(run) for run in folds]
        mean = {
            q: np.mean([e[q] for e in per_fold]) if folds else np.nan
            for q in QUANTITIES
        }
        same = representative.get(pair, pair)
        rows.append(
            {
                "chunk_size": pair[0],
                "token_budget": pair[1],
                **mean,
                "score": score(mean),
                "n_folds": len(folds),
                "same_engine_as": "" if same == pair else label(same),
                "error": first[pair] if isinstance(first[pair], str) else "",
            }
        )
    table = pd.DataFrame(rows)
    table = table.sort_values(
        ["n_folds", "score"],
        ascending=[False, True],
        na_position="last",
        kind="stable",
    ).reset_index(drop=True)
    for name in ("chunk_size", "token_budget"):
        table[name] = table[name].astype("Int64")
    return table


def pair_of(row) -> tuple:
    """``(chunk_size, token_budget)`` of a row of the scores table."""
    return tuple(
        None if pd.isna(v) else int(v) for v in (row["chunk_size"], row["token_budget"])
    )


def label(pair) -> str:
    """``chunk_size=C, token_budget=B`` or ``no chunking``."""
    chunk, budget = pair
    if chunk is None and budget is None:
        return "no chunking"
    parts = [f"chunk_size={chunk}"] if chunk is not None else []
    parts += [f"token_budget={budget}"] if budget is not None else []
    return ", ".join(parts)


def validation(runs, n_splits: int) -> dict:
    """``EngineConfig.validation`` from the held-out replays of each fold."""
    per_fold = [errors(run) for run in runs]
    folds = {q: [e[q] for e in per_fold] for q in QUANTITIES}
    means = {q: float(np.mean(v)) for q, v in folds.items()}
    return {**means, "score": score(means), "folds": folds, "n_splits": n_splits}


def held_out(runs) -> pd.DataFrame:
    """``EngineConfig.held_out``: observed and replayed TTFT and decode time."""
    replayed = pd.concat(runs, ignore_index=True)
    arrival = replayed["arrival"]
    return pd.DataFrame(
        {
            "request_id": replayed["request_id"],
            "observed_ttft": replayed["observed_prefill_end"] - arrival,
            "predicted_ttft": replayed["prefill_end"] - arrival,
            "observed_decode": replayed["observed_decode_end"]
            - replayed["observed_prefill_end"],
            "predicted_decode": replayed["decode_end"] - replayed["prefill_end"],
        }
    )


def simplest_within(table, n_kept: int, classes, tolerance: float) -> int:
    """Row of the scores table to choose: of the fully scored rows within
    ``tolerance`` of the best score, the largest prefill cap, then the best
    score."""
    members = {p: group for group in classes for p in group}
    rows = table.iloc[:n_kept]
    ties = rows.index[rows["score"] <= rows["score"].min() * (1.0 + tolerance)]
    caps = [max(cap(p) for p in members[pair_of(table.loc[i])]) for i in ties]
    return int(ties[int(np.argmax(caps))])


def cap(pair) -> float:
    """Most prompt tokens a request can prefill in one step."""
    return min(np.inf if v is None else v for v in pair)


def on_edge(chosen: list, pairs) -> str | None:
    """Where the chosen engine (every configuration identical to it on the
    trace) sits on the axis of per-step prefill caps, if at an open end."""
    caps = {cap(p) for p in pairs}
    mine = {cap(p) for p in chosen}
    if len(caps) < 2:
        return None
    if mine == {min(caps)}:
        return "low"
    if np.inf not in caps and mine == {max(caps)}:
        return "high"
    return None


def edge_message(best, edge, runner_up, margin, table) -> str:
    where = "smallest" if edge == "low" else "largest"
    text = (
        f"The engine configuration chosen ({label(best)}) has the {where} "
        "per-step prefill cap of the candidates: the engine's may lie beyond "
        f"it; add candidates {'below' if edge == 'low' else 'above'} it."
    )
    if runner_up is not None:
        text += (
            f" Runner-up: {label(runner_up)}, held-out score "
            f"{table.loc[1, 'score']:.4g} against {table.loc[0, 'score']:.4g} "
            f"({margin:+.1%})."
        )
    return text
