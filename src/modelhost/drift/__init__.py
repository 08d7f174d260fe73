"""Input drift: the monitor that watches live inputs against a reference, its statistics
(PSI, KS, KL), its store, the report and the alerts it sends."""
