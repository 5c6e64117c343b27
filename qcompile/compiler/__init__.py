"""The ``fqt`` backend: Dynamo's graph → qcompile's passes → AOTAutograd → Inductor, and what it keeps for the plan."""
