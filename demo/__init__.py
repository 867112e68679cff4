"""The simulated world of `editloop demo`: the synthetic style corpus, tastes and restyling, the tiny model's
bootstrap and simulated editor users. No product package imports it; only the CLI commands that start it do."""
