"""Models: the set-identifier recommender (T5, Qwen), sparse masks, and the SASRec and TIGER baselines."""
