"""retrieval: candidates from implicit ALS embeddings searched with FAISS, popular fallbacks."""

import os

# implicit parallelises ALS itself; OpenBLAS threads underneath it only contend for the
# same cores (implicit warns about it). This must be set before numpy loads OpenBLAS.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
