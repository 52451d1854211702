"""The paper's analyses (Fig. 1): dataset difficulty and architecture distinguishability."""
