"""The maths, each tested against a hand computation: contrastive losses gathered across processes
(`contrastive`), exact big-batch gradients (`gradcache`), the RL policy and its loss (`policy`), DPO/IPO
(`preference`).
"""
