"""Safety and utility evaluation of (fine-tuned) chat models, in JAX.

`stjax eval` runs benchmarks through cached batched generation, judges the safety answers
(refusal keywords, clean-refusal and degenerate-reply rules, Llama Guard) and scores the
task answers; `stjax report` compares runs in a table and plots. The pieces below are
usable on their own (judges, scorers, adapter loading; token probabilities in
`stjax.evaluation.token_mass`); they are imported on first use, so the report side
(tables, plots) runs without jax.
"""

import importlib

_EXPORTS = {
    "load_peft_adapter": "adapter", "EvalConfig": "config", "load_eval_config": "config",
    "REFUSAL_MARKERS": "keyword_judge", "KeywordJudge": "keyword_judge",
    "GuardVerdict": "llama_guard", "LlamaGuardJudge": "llama_guard", "parse_verdict": "llama_guard",
    "CleanRefusalJudge": "reply_rules", "ExactRefusalJudge": "reply_rules", "ReplyRules": "reply_rules",
    "degenerate_reasons": "reply_rules", "run_eval": "runner", "safety_mass_by_position": "safety_mass",
    "score_safety": "scoring", "score_task": "scoring", "score_harmless": "scoring", "wilson_interval": "stats",
    "ag_news_correct": "utility", "final_number": "utility", "gsm8k_correct": "utility", "sst2_correct": "utility",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'stjax.evaluation' has no attribute '{name}'")
    return getattr(importlib.import_module(f"stjax.evaluation.{_EXPORTS[name]}"), name)
