"""MedNet recipes: pretraining under Accelerate (`training.pretrain`) and fine-tuning with the transformers
Trainer (`training.finetune`), exposed as `mednet pretrain` and `mednet finetune`."""
