"""Stage 2: a linear [CLS] sentiment classifier on a (domain-adapted) encoder; publish; predict."""
