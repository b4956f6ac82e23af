// Grants when the claim service (keycloak-pep's http claim provider) says the customer is active.
var status = $evaluation.getContext().getAttributes().getValue('customer_status');
if (status != null && status.asString(0) === 'active') {
    $evaluation.grant();
}
