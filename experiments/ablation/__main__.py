"""``python -m experiments.ablation --config configs/ablate/demo.yaml [key=value ...]``"""

from experiments.ablation.driver import main

main()
