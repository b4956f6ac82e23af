// Grants when the claims keycloak-pep pushed (claim_token) say: branch "tokyo", amount <= 1000,
// and a client address in 203.0.113.0/24 (the trusted-proxy rules decide that address).
var attributes = $evaluation.getContext().getAttributes();
var branch = attributes.getValue('branch');
var amount = attributes.getValue('amount');
var ip = attributes.getValue('ip');
// A missing body field arrives as "" (Keycloak's JSON pointer rule): not a number, no grant.
var value = amount == null ? '' : String(amount.asString(0));
if (branch != null && ip != null
    && branch.asString(0) === 'tokyo'
    && /^[0-9]+(\.[0-9]+)?$/.test(value) && Number(value) <= 1000
    && ip.asString(0).indexOf('203.0.113.') === 0) {
    $evaluation.grant();
}
