"""The DAPT ablation: the classifier on the plain and on the DAPT encoder, several seeds, intervals."""
