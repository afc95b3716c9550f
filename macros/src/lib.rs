//! `#[derive(Reload)]`: every field of a config struct says what a reload
//! does with it, where the field is declared, or the struct does not
//! compile.
//!
//! - `#[reload(live)]`: a reload puts the new value in force;
//! - `#[reload(kept = REASON)]`: the old value stays until a restart, and
//!   the reload lists the key with `REASON` (a `&'static str` expression);
//! - `#[reload(nested)]`: a section whose own fields decide (its type
//!   derives `Reload` too); its keys are `field.key`;
//! - `#[reload(skip = "why")]`: not a key of the file (set by flags, say).
//!
//! The derive implements `crate::config::Reload`: `reload` walks the fields
//! once, and `keys` lists every key with its decision, which `docs/reload.md`
//! is checked against.

use proc_macro::TokenStream;
use proc_macro2::TokenStream as Tokens;
use quote::quote;
use syn::{parse_macro_input, Data, DeriveInput, Expr, Fields, LitStr};

/// See the crate's documentation.
#[proc_macro_derive(Reload, attributes(reload))]
pub fn derive_reload(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand(&input).unwrap_or_else(|e| e.to_compile_error()).into()
}

/// What one field's `#[reload(...)]` says.
enum Decision {
    Live,
    Kept(Expr),
    Nested,
    Skip,
}

const HOW: &str = "needs #[reload(live)], #[reload(kept = REASON)], #[reload(nested)] or \
                   #[reload(skip = \"why\")]: say what a reload does with it";

fn decision(field: &syn::Field) -> syn::Result<Decision> {
    let name = field.ident.as_ref().map(|i| i.to_string()).unwrap_or_default();
    let mut found = None;
    for attr in field.attrs.iter().filter(|a| a.path().is_ident("reload")) {
        if found.is_some() {
            return Err(syn::Error::new_spanned(
                attr,
                format!("field `{name}` has two #[reload] attributes"),
            ));
        }
        let mut d = None;
        attr.parse_nested_meta(|meta| {
            d = Some(if meta.path.is_ident("live") {
                Decision::Live
            } else if meta.path.is_ident("nested") {
                Decision::Nested
            } else if meta.path.is_ident("kept") {
                Decision::Kept(meta.value()?.parse()?)
            } else if meta.path.is_ident("skip") {
                let why: LitStr = meta.value()?.parse()?;
                if why.value().trim().is_empty() {
                    return Err(meta.error("skip needs a reason"));
                }
                Decision::Skip
            } else {
                return Err(meta.error(format!("field `{name}` {HOW}")));
            });
            Ok(())
        })?;
        found = d;
    }
    found.ok_or_else(|| syn::Error::new_spanned(field, format!("field `{name}` {HOW}")))
}

/// The impl, or the error that names the field without a decision.
fn expand(input: &DeriveInput) -> syn::Result<Tokens> {
    let Data::Struct(data) = &input.data else {
        return Err(syn::Error::new_spanned(
            input,
            "#[derive(Reload)] is for structs with named fields",
        ));
    };
    let Fields::Named(fields) = &data.fields else {
        return Err(syn::Error::new_spanned(
            input,
            "#[derive(Reload)] is for structs with named fields",
        ));
    };
    let mut reload = Vec::new();
    let mut keys = Vec::new();
    for field in &fields.named {
        let ident = field.ident.as_ref().expect("named field");
        let key = ident.to_string();
        let ty = &field.ty;
        match decision(field)? {
            Decision::Live => {
                reload.push(quote! {
                    if self.#ident != new.#ident {
                        self.#ident = ::core::clone::Clone::clone(&new.#ident);
                        out.changed.push(crate::config::reload_key(prefix, #key));
                    }
                });
                keys.push(quote! {
                    out.push((crate::config::reload_key(prefix, #key), crate::config::KeyDecision::Live));
                });
            }
            Decision::Kept(reason) => {
                reload.push(quote! {
                    if self.#ident != new.#ident {
                        out.kept.push(crate::config::Kept {
                            key: crate::config::reload_key(prefix, #key),
                            reason: #reason,
                        });
                    }
                });
                keys.push(quote! {
                    out.push((crate::config::reload_key(prefix, #key), crate::config::KeyDecision::Kept(#reason)));
                });
            }
            Decision::Nested => {
                reload.push(quote! {
                    crate::config::Reload::reload(
                        &mut self.#ident, &new.#ident, &crate::config::reload_key(prefix, #key), out);
                });
                keys.push(quote! {
                    <#ty as crate::config::Reload>::keys(&crate::config::reload_key(prefix, #key), out);
                });
            }
            Decision::Skip => {}
        }
    }
    let name = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    Ok(quote! {
        impl #impl_generics crate::config::Reload for #name #ty_generics #where_clause {
            fn reload(&mut self, new: &Self, prefix: &str, out: &mut crate::config::Changes) {
                #(#reload)*
            }
            fn keys(prefix: &str, out: &mut ::std::vec::Vec<(::std::string::String, crate::config::KeyDecision)>) {
                #(#keys)*
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(input: DeriveInput) -> String {
        match expand(&input) {
            Ok(t) => panic!("expanded: {t}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_field_without_a_decision_does_not_compile_and_is_named() {
        let e = error_of(syn::parse_quote! {
            struct S {
                #[reload(live)]
                a: u32,
                b: u32,
            }
        });
        assert!(e.starts_with("field `b` needs #[reload(live)]"), "{e}");
    }

    #[test]
    fn an_unknown_decision_two_decisions_and_a_skip_without_reason_are_refused() {
        let e = error_of(syn::parse_quote! { struct S { #[reload(maybe)] a: u32 } });
        assert!(e.contains("field `a` needs"), "{e}");
        let e = error_of(syn::parse_quote! { struct S { #[reload(live)] #[reload(nested)] a: u32 } });
        assert!(e.contains("two #[reload] attributes"), "{e}");
        let e = error_of(syn::parse_quote! { struct S { #[reload(skip = " ")] a: u32 } });
        assert!(e.contains("skip needs a reason"), "{e}");
    }

    #[test]
    fn each_decision_expands_to_its_own_handling() {
        let t = expand(&syn::parse_quote! {
            struct S {
                #[reload(live)] a: u32,
                #[reload(kept = WHY)] b: u32,
                #[reload(nested)] c: Inner,
                #[reload(skip = "set by a flag")] d: u32,
            }
        })
        .unwrap()
        .to_string();
        assert!(
            t.contains("self . a = :: core :: clone :: Clone :: clone (& new . a)"),
            "{t}"
        );
        assert!(t.contains("reason : WHY"), "{t}");
        assert!(t.contains("Reload :: reload (& mut self . c"), "{t}");
        assert!(!t.contains("self . b ="), "a kept field is never assigned: {t}");
        assert!(!t.contains(". d"), "a skipped field is not read: {t}");
    }
}
