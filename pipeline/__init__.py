"""The fine-tuning pipeline's library: everything the DVC stages (`stages/`) and the commands (`promote`,
`predict`) share. Registered models carry this package as their code, so it imports nothing from
`stages/` or the repository."""
