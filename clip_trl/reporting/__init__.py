"""What a run shows a person: training-curve pictures (`curves`), the RL rollout tables (`rollouts`, and their
console table in `console`) and retrieval examples (`retrieval_grid`).
"""
