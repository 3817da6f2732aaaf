"""Contrastive pretraining: the NT-Xent loss, frame pairs of one clip and the kNN / linear probe."""
