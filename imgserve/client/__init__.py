"""Classify a folder through a running server (`python client.py`): one file per job.

`cli` the command (options, progress, exit codes), `files` what is sent and in which batches,
`sender` the HTTP requests and their retries, `results` the output table. Plain HTTP (httpx,
tenacity): the client side needs no BentoML and no torch.
"""
