"""The sequential user model (GUIM): several vectors per user over the item text of a PLM.

model       GUIM: C vectors per user over item vectors from id and language-model text (and its variants)
objective   GUIM's two pre-training tasks behind the training loop's objective interface
sequences   training sequences and evaluation queries (the shop's temporal windows, leave-one-out)
fit         training with the shared loop, the epoch chosen on valid
variants    each configured variant trained per seed, summarised and chosen on valid (train-user-model)
retrieval   max_c cos(u_c, v_j) retrieval with one item index, evaluation
store       a trained model as a file, the stage's saved folder, the scores other models read
probe       the consumer-profile probe (what a user vector says about the customer)
"""
