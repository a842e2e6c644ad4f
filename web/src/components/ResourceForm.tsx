// A create/edit dialog for one resource: fields from FieldDefs, client-side checks on submit, and
// the server's problem+json shown next to the field it names.
import { useEffect, useState } from 'react';
import {
  Alert,
  Button,
  Checkbox,
  Dialog,
  DialogActions,
  DialogContent,
  DialogTitle,
  FormControlLabel,
  MenuItem,
  Stack,
  TextField,
} from '@mui/material';
import { useQuery } from '@tanstack/react-query';
import { get } from '../api/client';
import { fieldErrors } from '../api/problem';
import type { List } from '../api/types';
import { buildBody, emptyForm, formFromObject, type FieldDef, type FormValues } from '../lib/form';

type Named = { id: number; name: string };

function useRefOptions(ref: FieldDef['ref'], enabled: boolean) {
  return useQuery({
    queryKey: ['list', ref, 'options'],
    queryFn: () => get<List<Named>>(`/${ref}?limit=1000&sort=name`),
    enabled: enabled && ref !== undefined,
  });
}

function RefSelect({ f, value, onChange, error, disabled }: FieldProps) {
  const opts = useRefOptions(f.ref, true);
  const multiple = f.kind === 'ids';
  return (
    <TextField
      select
      label={f.label}
      value={multiple ? ((value as number[]) ?? []) : String(value ?? '')}
      onChange={(e) => onChange(multiple ? (e.target.value as unknown as number[]) : e.target.value)}
      error={Boolean(error)}
      helperText={error ?? f.help}
      required={f.required}
      disabled={disabled}
      slotProps={{ select: { multiple }, htmlInput: { 'data-field': f.name } }}
    >
      {f.nullable && !multiple && <MenuItem value="">(none)</MenuItem>}
      {(opts.data?.items ?? []).map((o) => (
        <MenuItem key={o.id} value={multiple ? o.id : String(o.id)}>
          {o.name} (#{o.id})
        </MenuItem>
      ))}
    </TextField>
  );
}

interface FieldProps {
  f: FieldDef;
  value: unknown;
  onChange: (v: unknown) => void;
  error?: string;
  disabled?: boolean;
}

export function Field(props: FieldProps) {
  const { f, value, onChange, error, disabled } = props;
  if (f.ref) return <RefSelect {...props} />;
  if (f.kind === 'bool')
    return (
      <FormControlLabel
        control={<Checkbox checked={Boolean(value)} onChange={(e) => onChange(e.target.checked)} disabled={disabled} />}
        label={f.label}
      />
    );
  if (f.kind === 'select' || f.kind === 'multi')
    return (
      <TextField
        select
        label={f.label}
        value={f.kind === 'multi' ? ((value as string[]) ?? []) : String(value ?? '')}
        onChange={(e) => onChange(e.target.value)}
        error={Boolean(error)}
        helperText={error ?? f.help}
        required={f.required}
        disabled={disabled}
        slotProps={{ select: { multiple: f.kind === 'multi' }, htmlInput: { 'data-field': f.name } }}
      >
        {f.nullable && <MenuItem value="">(none)</MenuItem>}
        {(f.options ?? []).map((o) => (
          <MenuItem key={o} value={o}>
            {o}
          </MenuItem>
        ))}
      </TextField>
    );
  const multiline = f.kind === 'textarea' || f.kind === 'backends' || f.kind === 'json';
  return (
    <TextField
      label={f.label}
      name={f.name}
      value={String(value ?? '')}
      onChange={(e) => onChange(e.target.value)}
      error={Boolean(error)}
      helperText={error ?? f.help}
      required={f.required}
      disabled={disabled}
      multiline={multiline}
      minRows={multiline ? 3 : undefined}
      type={f.writeOnly && f.kind === 'text' && f.name.includes('password') ? 'password' : 'text'}
      slotProps={{ htmlInput: { 'data-field': f.name, inputMode: f.kind === 'number' ? 'numeric' : undefined } }}
    />
  );
}

export interface ResourceFormProps {
  open: boolean;
  title: string;
  fields: readonly FieldDef[];
  initial?: Record<string, unknown>; // the object being edited; absent = create
  onSubmit: (body: Record<string, unknown>) => Promise<unknown>;
  onClose: () => void;
}

export function ResourceForm({ open, title, fields, initial, onSubmit, onClose }: ResourceFormProps) {
  const [values, setValues] = useState<FormValues>(() => (initial ? formFromObject(fields, initial) : emptyForm(fields)));
  const [original, setOriginal] = useState<FormValues | undefined>(undefined);
  const [errors, setErrors] = useState<Record<string, string>>({});
  const [general, setGeneral] = useState<string | undefined>();
  const [busy, setBusy] = useState(false);
  useEffect(() => {
    if (!open) return;
    const v = initial ? formFromObject(fields, initial) : emptyForm(fields);
    setValues(v);
    setOriginal(initial ? v : undefined);
    setErrors({});
    setGeneral(undefined);
  }, [open, initial, fields]);

  const submit = async () => {
    const { body, errors: errs } = buildBody(fields, values, original);
    setErrors(errs);
    setGeneral(undefined);
    if (Object.keys(errs).length) return;
    if (original && Object.keys(body).length === 0) {
      onClose();
      return;
    }
    setBusy(true);
    try {
      await onSubmit(body);
      onClose();
    } catch (e) {
      const fe = fieldErrors(
        e,
        fields.map((f) => f.name),
      );
      setErrors(fe.byField);
      setGeneral(fe.general);
    } finally {
      setBusy(false);
    }
  };

  return (
    <Dialog open={open} onClose={onClose} fullWidth maxWidth="sm" aria-labelledby="form-title">
      <DialogTitle id="form-title">{title}</DialogTitle>
      <DialogContent>
        <Stack
          component="form"
          spacing={2}
          sx={{ pt: 1 }}
          noValidate
          onSubmit={(e) => {
            e.preventDefault();
            void submit();
          }}
        >
          {general && (
            <Alert severity="error" data-testid="form-error">
              {general}
            </Alert>
          )}
          {fields.map((f) => (
            <Field
              key={f.name}
              f={f}
              value={values[f.name]}
              error={errors[f.name]}
              disabled={Boolean(initial && f.createOnly)}
              onChange={(v) => setValues((s) => ({ ...s, [f.name]: v }))}
            />
          ))}
          <button type="submit" hidden />
        </Stack>
      </DialogContent>
      <DialogActions>
        <Button onClick={onClose}>Cancel</Button>
        <Button variant="contained" color="secondary" disabled={busy} onClick={() => void submit()}>
          {initial ? 'Save' : 'Create'}
        </Button>
      </DialogActions>
    </Dialog>
  );
}
