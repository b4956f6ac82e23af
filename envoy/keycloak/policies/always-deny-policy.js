// The replayed PolicyEnforcerTest's "Always Deny Policy" (realm authz-test).
$evaluation.deny();
