// The replayed PolicyEnforcerClaimsTest's "Withdrawal Limit Policy" (realm authz-test): grants a
// withdrawal when the pushed claim withdrawal.amount is at most 100.
var amount = $evaluation.getContext().getAttributes().getValue('withdrawal.amount');
if (amount != null && /^[0-9]+$/.test(String(amount.asString(0)))
    && Number(amount.asString(0)) <= 100) {
    $evaluation.grant();
}
