"""Item tokenizers: CF embeddings, semantic text embeddings and autoencoder, set-identifier tables, RQ-KMeans ids."""
