// The replayed PolicyEnforcerTest's "Always Grant Policy" (realm authz-test).
$evaluation.grant();
