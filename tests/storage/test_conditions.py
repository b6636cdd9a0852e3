from __future__ import annotations

from mmlo.orchestrator.spec import SearchParam
from mmlo.storage.conditions import condition_holds


def test_one_rule_for_the_driver_and_the_report() -> None:
    # a named parameter must be present with an accepted value (one value, or one of a list); no condition holds
    when = {"modulation": ["film", "kml"], "kml_rank": 2}
    assert condition_holds(when, {"modulation": "kml", "kml_rank": 2})
    assert not condition_holds(when, {"modulation": "sigmoid", "kml_rank": 2})
    assert not condition_holds(when, {"modulation": "kml"})  # kml_rank was not sampled
    assert condition_holds(None, {}) and condition_holds({}, {"x": 1})
    # the report reads values back from Parquet, where 2 may come back as 2.0 or "2"
    assert condition_holds({"kml_rank": 2}, {"kml_rank": 2.0}) and condition_holds({"kml_rank": 2}, {"kml_rank": "2"})
    # the spec's SearchParam.matches is this rule
    param = SearchParam(type="int", low=1, high=4, when={"modulation": "kml"})
    assert param.matches({"modulation": "kml"}) and not param.matches({"modulation": "film"}) and not param.matches({})
