"""PACT (arXiv 2603.07445) in one package.

stage 1: `safety_tokens` (teacher-forced aligned vs base, the sparse direction, files) and
`stage1` (the job and its config, `stjax safety-tokens`); stage 2: `reference` (the frozen
model's full-context and response-only safety-token logits), `loss` (`GateSettings`, the
gate, the gated KL, the experimental bucket KL) and `objective` (CE + lambda * KL as an
`Objective`, from factories with explicit hyperparameters).
"""
