"""Safety and utility evaluation of (fine-tuned) chat models, in JAX.

`python -m stjax.eval` runs benchmarks through cached batched generation, judges the
safety answers (refusal keywords, clean-refusal and degenerate-reply rules, Llama Guard) and scores the task answers;
`python -m stjax.report` compares runs in a table and plots. The pieces below are usable
on their own (judges, scorers, adapter loading, token probabilities).
"""

from stjax.evaluation.adapter import load_peft_adapter
from stjax.evaluation.config import EvalConfig, load_eval_config
from stjax.evaluation.keyword_judge import REFUSAL_MARKERS, KeywordJudge
from stjax.evaluation.llama_guard import GuardVerdict, LlamaGuardJudge, parse_verdict
from stjax.evaluation.reply_rules import CleanRefusalJudge, ExactRefusalJudge, ReplyRules, degenerate_reasons
from stjax.evaluation.runner import run_eval
from stjax.evaluation.safety_mass import safety_mass_by_position
from stjax.evaluation.scoring import score_safety, score_task
from stjax.evaluation.stats import wilson_interval
from stjax.evaluation.token_mass import token_mass
from stjax.evaluation.utility import ag_news_correct, final_number, gsm8k_correct, sst2_correct

__all__ = [
    "REFUSAL_MARKERS", "CleanRefusalJudge", "EvalConfig", "ExactRefusalJudge", "GuardVerdict", "KeywordJudge",
    "LlamaGuardJudge", "ReplyRules", "ag_news_correct", "degenerate_reasons", "final_number", "gsm8k_correct",
    "load_eval_config", "load_peft_adapter", "parse_verdict", "run_eval", "safety_mass_by_position",
    "score_safety", "score_task", "sst2_correct", "token_mass", "wilson_interval",
]
