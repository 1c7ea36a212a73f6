"""Stage 1: domain-adaptive masked-language-model training of a pretrained encoder (and the
runtime, config and data code that stage 2 shares)."""
