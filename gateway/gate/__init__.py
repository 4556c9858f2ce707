"""``gateway gate``: replay a prompt set through a candidate upstream before it ships.

The prompts go to the candidate (and a baseline, when given), every policy
judges each answer as the proxy would, and the report says per policy how
often each side breached, with confidence intervals, how the candidate
differs from the baseline, and the worst examples with their evidence. The
exit code says whether the candidate passes the thresholds, so a CI job can
refuse a model or prompt change.

- ``prompts``: the prompt file (JSON Lines) and its errors, line by line;
- ``replay``: asking the upstreams, with bounded concurrency, retries and a
  results file that lets an interrupted run resume;
- ``thresholds``: the YAML file of limits;
- ``report``: the verdict, JSON, Markdown and the plot, with the intervals
  of ``gateway.stats``.
"""
