"""Cloud side: the orchestrator CLI (`edb cloud ...`), Key Vault lifecycle (`edb keyvault ...`), the demo."""
